"""Caption metrics with the coco-caption definitions CLIP_benchmark reports: BLEU-1..4 and CIDEr-D.

CLIP_benchmark's captioning task tokenizes candidates and references with coco-caption's
``PTBTokenizer`` (Stanford CoreNLP's PTB tokenizer run in Java with ``-lowerCase``, then every
token in a fixed punctuation list dropped) and scores them with ``pycocoevalcap``'s ``Bleu(4)`` and
``Cider()``. This module reimplements those definitions in plain Python:

* :func:`tokenize_caption` is a pure-Python stand-in for the Java tokenizer plus the punctuation
  filter. It follows the PTB rules that occur in captions: lowercasing; punctuation split off and
  dropped (``. , ; : ? ! ' " `` `` '' - -- ...`` and Unicode quotes and dashes); contractions split
  (``isn't`` -> ``is n't``, ``dog's`` -> ``dog 's``, ``cannot`` -> ``can not``, ``gonna`` ->
  ``gon na``); ``$ % & # @ * = | ^ ~ \\`` separate tokens; numbers (``3.5``, ``1,000``, ``7:30``,
  ``1/2``), hyphenated words, ``and/or`` and abbreviations (``mr.``, ``u.s.``, ``e.g.``) kept whole.
  Brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` and are *kept*, as in coco-caption,
  whose punctuation list names the upper-case forms the lower-casing tokenizer never emits. Exotic
  inputs (``dog!a``, ``5p.m.``, rare abbreviations) can still differ from the Java tokenizer.
* :func:`bleu` is corpus BLEU as ``pycocoevalcap.bleu.Bleu`` computes it: clipped n-gram counts
  summed over the corpus, the reference length of each sentence the one closest to the candidate's
  length (the shorter on ties; the ``closest`` option), one brevity penalty for the corpus, and no
  smoothing beyond the scorer's own guards (``(correct + 1e-15) / (guess + 1e-9)`` and
  ``(len_c + 1e-15) / (len_r + 1e-9)``).
* :func:`cider` is CIDEr-D (Vedantam et al. 2015) as ``pycocoevalcap.cider.Cider`` computes it:
  TF-IDF n-gram vectors (n = 1..4), document frequencies counted over the reference sets of the
  evaluated images (an n-gram counts once per image), IDF ``log(#images) - log(max(1, df))``,
  per n the cosine with each reference where the candidate's weights are clipped at the
  reference's, times ``exp(-delta^2 / (2 sigma^2))`` with sigma = 6 and delta the difference of the
  two sentences' *bigram* counts (the reference scorer's length), averaged over n and over
  references, times 10, and finally averaged over images.

Inputs of :func:`bleu` and :func:`cider` are whitespace-tokenized strings (already tokenized);
:func:`caption_scores` tokenizes raw captions first.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

# coco-caption's punctuation list, as tokens of the lower-cased output
_DROPPED = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_QUOTES = frozenset(['"', '""'])  # become `` or '' in the PTB tokenizer: dropped too
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Unicode quotes, dashes and ellipses, as the PTB tokenizer reads them (its ASCII forms)
_UNICODE_PUNCT = str.maketrans(
  {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    **{c: " " for c in "\u00ab\u00bb\u2039\u203a"},
    **{c: " -- " for c in "\u2012\u2013\u2014\u2015"},
    "\u2026": " ... ",
  }
)
_SYMBOLS = set("$%&*=|^~\\<>\u201e")  # split off as their own tokens
_PREFIXES = set("#@")  # split off unless a letter follows (#tag and @user stay whole)
_TAG = re.compile(r"(</?[a-z][a-z0-9]*>)")  # SGML-like tags become tokens of their own
_CLOCK = re.compile(r"^(\d+(?::\d+)?)([ap]m)$")  # 7:30pm -> 7:30 pm
_ABBREVIATIONS = frozenset(
  "mr mrs ms dr st jr sr inc ltd co corp ave rd blvd mt ft no vs etc prof gen gov sen rep capt lt "
  "col sgt bros jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_ACRONYM = re.compile(r"^[a-z](?:\.[a-z])*$")  # a / u.s / e.g / a.m (before the final period)
_NUMBER = re.compile(r"^[-+]?\d+(?:[.,:/]\d+)*$")
_SPECIAL_WORDS = {
  "cannot": ["can", "not"],
  "gonna": ["gon", "na"],
  "gotta": ["got", "ta"],
  "wanna": ["wan", "na"],
  "lemme": ["lem", "me"],
  "gimme": ["gim", "me"],
  "'tis": ["'t", "is"],
  "'twas": ["'t", "was"],
}
_CLITICS = ("n't", "'s", "'m", "'d", "'ll", "'re", "'ve")


def _split_word(word: str) -> list[str]:
  """A chunk with no whitespace, brackets or symbols -> PTB tokens (dropped ones included).

  Rules in the tokenizer's order: whole-word cases, then punctuation at the edges, then inside.
  """
  if not word:
    return []
  for rules in (_whole_word, _edges, _inside):
    tokens = rules(word)
    if tokens is not None:
      return tokens
  return [word]


def _whole_word(word: str) -> list[str] | None:
  if word in _SPECIAL_WORDS:
    return list(_SPECIAL_WORDS[word])
  if word in _CLITICS:  # already split, as in "a dog 's toy"
    return [word]
  clock = _CLOCK.match(word)
  if clock:
    return [clock.group(1), clock.group(2)]
  if set(word) <= set(".-!?,;:'\"`"):  # pure punctuation: runs of one mark; ?! !! stay whole
    return re.findall(r"[!?]+|\.+|-+|'+|\"+|`+|,+|;+|:+", word)
  return None


def _edges(word: str) -> list[str] | None:
  # leading quotes / punctuation
  lead = re.match(r"^([\"`]+|'(?!\d\ds\b)|[-]{2,}|[,;:!?]+|\.{2,})", word)
  if lead:
    return [lead.group(0)] + _split_word(word[lead.end() :])
  # trailing quotes and punctuation, peeled one unit at a time
  trail = re.search(r"([\"`]+|''|[,;:]|[!?]+|-{2,})$", word)
  if trail and trail.start() > 0:
    return _split_word(word[: trail.start()]) + [trail.group(0)]
  if word.endswith(".") and len(word) > 1:
    stem = word.rstrip(".")
    run = word[len(stem) :]
    if stem in _ABBREVIATIONS or _ACRONYM.match(stem):  # the first period belongs to the word
      return [stem + "."] + ([run[1:]] if len(run) > 1 else [])
    return _split_word(stem) + [run]
  if word == "'n'":
    return [word]
  if word.endswith("'") and len(word) > 1:
    return _split_word(word[:-1]) + ["'"]
  return None


def _inside(word: str) -> list[str] | None:
  if _NUMBER.match(word):
    return [word]
  # internal comma / semicolon / colon between non-digits: split
  m = re.search(r"(?<!\d)[,;:]|[,;:](?!\d)", word)
  if m:
    return _split_word(word[: m.start()]) + [m.group(0)] + _split_word(word[m.end() :])
  internal_dashes = word.find("--")
  if internal_dashes > 0:
    return (
      _split_word(word[:internal_dashes]) + ["--"] + _split_word(word[internal_dashes + 2 :].lstrip("-"))
    )
  for clitic in _CLITICS:
    if word.endswith(clitic) and len(word) > len(clitic):
      return _split_word(word[: -len(clitic)]) + [clitic]
  if "'n'" in word:  # rock'n'roll
    i = word.index("'n'")
    return _split_word(word[:i]) + ["'n'"] + _split_word(word[i + 3 :])
  if word.startswith("y'") and len(word) > 2:  # y'all
    return ["y'"] + _split_word(word[2:])
  return None


def ptb_tokens(text: str) -> list[str]:
  """The lower-cased PTB-style tokens of ``text``, punctuation still included."""
  text = text.replace("\n", " ").lower().translate(_UNICODE_PUNCT)
  tokens: list[str] = []
  for chunk in text.split():
    if chunk.startswith(("http://", "https://", "www.")) or re.match(r"^[^@\s]+@[^@\s]+\.\w+$", chunk):
      tokens.append(chunk)  # URLs and e-mail addresses stay whole
      continue
    for part in _TAG.split(chunk):
      if _TAG.fullmatch(part):
        tokens.append(part)
        continue
      piece: list[str] = []
      for i, ch in enumerate(part):
        split = (
          ch in _BRACKETS
          or ch in _SYMBOLS
          or (ch in _PREFIXES and not (i + 1 < len(part) and part[i + 1].isalpha()))
        )
        if split:
          tokens.extend(_split_word("".join(piece)))
          piece = []
          tokens.append(_BRACKETS.get(ch, ch))
        else:
          piece.append(ch)
      tokens.extend(_split_word("".join(piece)))
  return tokens


def tokenize_caption(text: str) -> list[str]:
  """Lower-cased PTB-style tokens of a caption with coco-caption's punctuation tokens removed."""
  # runs of periods or dashes (".." "---") come out of the PTB tokenizer as dropped tokens too
  return [
    t for t in ptb_tokens(text) if t not in _DROPPED and t not in _QUOTES and not set(t) <= {".", "-"}
  ]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
  counts: Counter = Counter()
  for k in range(1, n + 1):
    for i in range(len(tokens) - k + 1):
      counts[tuple(tokens[i : i + k])] += 1
  return counts


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  if isinstance(candidates, str):
    raise TypeError("candidates must be a list of strings, one per image")
  if len(candidates) != len(references):
    raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or len(refs) == 0:
      raise ValueError(f"reference set {i} must be a non-empty list of strings, got {refs!r}")


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> dict[str, float]:
  """Corpus BLEU-1..n ``{"bleu1": .., ..., "bleun": ..}`` of tokenized candidates (coco-caption)."""
  _check(candidates, references)
  correct = [0] * n
  guess = [0] * n
  cand_len = 0
  ref_len = 0
  for cand, refs in zip(candidates, references):
    words = cand.split()
    counts = _ngrams(words, n)
    max_ref: dict = {}
    lengths = []
    for ref in refs:
      ref_words = ref.split()
      lengths.append(len(ref_words))
      for gram, c in _ngrams(ref_words, n).items():
        if c > max_ref.get(gram, 0):
          max_ref[gram] = c
    for gram, c in counts.items():
      correct[len(gram) - 1] += min(c, max_ref.get(gram, 0))
    for k in range(n):
      guess[k] += max(0, len(words) - k)
    cand_len += len(words)
    ref_len += min(lengths, key=lambda length: (abs(length - len(words)), length))
  scores = {}
  log_product = 1.0
  for k in range(n):
    log_product *= (correct[k] + 1e-15) / (guess[k] + 1e-9)
    scores[f"bleu{k + 1}"] = log_product ** (1.0 / (k + 1))
  ratio = (cand_len + 1e-15) / (ref_len + 1e-9)
  if ratio < 1:
    penalty = math.exp(1 - 1 / ratio)
    scores = {key: value * penalty for key, value in scores.items()}
  return scores


def _tfidf(
  counts: Counter, df: Counter, log_num_images: float, n: int
) -> tuple[list[dict], list[float], int]:
  """Per-order TF-IDF weights, their norms and the sentence's bigram count."""
  vec: list[dict] = [{} for _ in range(n)]
  sq = [0.0] * n
  for gram, tf in counts.items():
    w = tf * (log_num_images - math.log(max(1.0, df.get(gram, 0))))
    vec[len(gram) - 1][gram] = w
    sq[len(gram) - 1] += w * w
  length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
  return vec, [math.sqrt(s) for s in sq], length


def cider_per_image(
  candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
  """CIDEr-D of each image (tokenized inputs); :func:`cider` is their mean."""
  _check(candidates, references)
  ref_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
  df: Counter = Counter()
  for refs in ref_counts:
    df.update(set(gram for c in refs for gram in c))
  log_num_images = math.log(float(len(references))) if references else 0.0
  scores = []
  for cand, refs in zip(candidates, ref_counts):
    vec, norm, length = _tfidf(_ngrams(cand.split(), n), df, log_num_images, n)
    total = [0.0] * n
    for ref in refs:
      rvec, rnorm, rlength = _tfidf(ref, df, log_num_images, n)
      penalty = math.exp(-(float(length - rlength) ** 2) / (2 * sigma**2))
      for k in range(n):
        dot = sum(min(w, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, w in vec[k].items())
        if norm[k] != 0 and rnorm[k] != 0:
          dot /= norm[k] * rnorm[k]
        total[k] += dot * penalty
    scores.append(10.0 * (sum(total) / n) / len(refs))
  return scores


def cider(
  candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> float:
  """Corpus CIDEr-D (coco-caption's ``Cider``) of tokenized candidates against their references."""
  scores = cider_per_image(candidates, references, n=n, sigma=sigma)
  return float(sum(scores) / len(scores)) if scores else float("nan")


def caption_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
  """``{"bleu4", "cider"}`` of raw captions: tokenized (:func:`tokenize_caption`) first."""
  _check(candidates, references)
  cands = [" ".join(tokenize_caption(c)) for c in candidates]
  refs = [[" ".join(tokenize_caption(r)) for r in rs] for rs in references]
  return {"bleu4": bleu(cands, refs, n=4)["bleu4"], "cider": cider(cands, refs)}
