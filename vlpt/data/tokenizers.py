"""Tokenizers, chosen by ``config.data.tokenizer.name``.

Every tokenizer maps texts to fixed-length int32 rows ``[N, context_length]`` and exposes
``context_length``, ``vocab_size``, ``pad_id``, ``sot_id`` and ``eot_id`` (None where the
family has no such token).

- "word": a closed word vocabulary (the built-in dataset).
- "clip_bpe": CLIP's byte-level BPE, id-for-id with open_clip's tokenizer (vocabulary shipped).
- "hf": any HF ``tokenizers`` file (``tokenizer.json``), or a CLIP ``vocab.json`` +
  ``merges.txt`` directory.
- "sentencepiece": a SentencePiece model, as big_vision's SigLIP (ids + EOS, padded).
- "wordpiece": BERT-style ``[CLS] ... [SEP]`` (ALIGN-style text towers).
CLIP-style rows are ``[SOT, tokens..., EOT, pad...]`` with EOT the largest id, so a text tower can
pool at ``argmax(ids)``; truncation always keeps the closing token (EOT / EOS / [SEP]) last.
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vlpt.registry import Registry

TOKENIZERS: Registry = Registry("tokenizer")

_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
  """Lower-cased word-level tokenizer over a fixed vocabulary: DEMO-ONLY, it knows the built-in
  dataset's words and nothing else (own captions: ``clip_bpe``, or the model's own tokenizer).

  Ids: 0 pad, 1 unknown word, 2.. the vocabulary, then SOT and EOT (the largest id).
  """

  pad_id = 0
  unk_id = 1

  def __init__(self, vocabulary: Iterable[str], context_length: int):
    words = sorted(set(vocabulary))
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
    self.context_length = context_length
    self._ids = {w: i + 2 for i, w in enumerate(words)}
    self.sot_id = len(words) + 2
    self.eot_id = len(words) + 3
    self.vocab_size = len(words) + 4

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(w, self.unk_id) for w in _WORD.findall(text.lower())]

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """Texts -> int32 ids [N, context_length]."""
    return _rows(
      [[self.sot_id, *self.encode(t), self.eot_id] for t in _as_list(texts)],
      self.context_length,
      self.pad_id,
    )

  def decode(self, ids: Sequence[int]) -> str:
    words = {i: w for w, i in self._ids.items()}
    return " ".join(words[int(i)] for i in ids if int(i) in words)


def _as_list(texts: str | Sequence[str]) -> list[str]:
  return [texts] if isinstance(texts, str) else list(texts)


def _rows(
  sequences: Sequence[Sequence[int]], length: int, pad_id: int, keep_last: bool = True
) -> np.ndarray:
  """Pads/truncates id lists to ``length``; with ``keep_last`` a truncated row keeps its closing token
  (EOT/EOS/[SEP]) last, where a text tower pools."""
  out = np.full((len(sequences), length), pad_id, np.int32)
  for row, ids in enumerate(sequences):
    ids = list(ids)
    if len(ids) > length:
      ids = ids[: length - 1] + ids[-1:] if keep_last else ids[:length]
    out[row, : len(ids)] = ids
  return out


# ---- CLIP byte-level BPE -------------------------------------------------------------------
CLIP_VOCAB = os.path.join(os.path.dirname(__file__), "assets", "bpe_simple_vocab_16e6.txt.gz")
CLIP_NUM_MERGES = 49152 - 256 - 2  # the merges CLIP's 49408-token vocabulary uses
# words, single digits and runs of other symbols; contractions split as in GPT-2/CLIP
CLIP_PATTERN = (
  r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
  r"[^\s\p{L}\p{N}]+"
)


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
  """One printable unicode character per byte value (bytes that print as themselves keep their
  character; the rest are moved to code points from 256 up), so BPE never sees raw bytes."""
  keep = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("\xa1"), ord("\xac") + 1),
    *range(ord("\xae"), ord("\xff") + 1),
  ]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return tuple(table[b] for b in range(256))


@functools.lru_cache(maxsize=4)
def clip_merges(path: str = CLIP_VOCAB) -> tuple[tuple[str, str], ...]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CLIP BPE vocabulary not found: {path} (a gzip of BPE merges)")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")[1 : CLIP_NUM_MERGES + 1]
  return tuple(tuple(line.split()) for line in lines)


def clip_vocabulary(path: str = CLIP_VOCAB) -> list[str]:
  """Token strings in id order: bytes, bytes + end-of-word, merges, then SOT and EOT.

  Byte tokens are ordered as CLIP numbers them: the self-printing bytes first, then the moved
  ones (i.e. by their character's code point).
  """
  alphabet = sorted(byte_alphabet(), key=ord)
  return (
    alphabet
    + [c + "</w>" for c in alphabet]
    + ["".join(m) for m in clip_merges(path)]
    + ["<start_of_text>", "<end_of_text>"]
  )


@functools.cache
def _ftfy():
  try:
    import ftfy
  except ImportError as e:  # pragma: no cover - ftfy is an install requirement
    raise ImportError("CLIP's text cleaning needs ftfy (pip install ftfy)") from e
  return ftfy


def clip_clean(text: str, lower: bool = True) -> str:
  """CLIP's text normalization: ftfy repair, HTML unescaping (twice), whitespace collapse, lower case.

  Printable ASCII without '&' skips ftfy and unescaping, which leave such text unchanged (most captions
  are such text, and ftfy is most of the cost).
  """
  if not (text.isascii() and text.isprintable() and "&" not in text):
    text = html.unescape(html.unescape(_ftfy().fix_text(text)))
  text = " ".join(text.split())  # str.split's whitespace, as open_clip's
  return text.lower() if lower else text


class ClipBpeTokenizer:
  """CLIP's BPE tokenizer (Radford et al. 2021; Sennrich et al. 2016's BPE over UTF-8 bytes).

  Same ids as open_clip's ``tokenize``: SOT 49406, EOT 49407, pad 0, truncation keeps EOT. Each distinct
  pre-token is merged once and its ids are cached, so repeated words cost a dict lookup.
  """

  pad_id = 0
  unk_id = None  # byte-level: every text has ids
  cache_size = 1 << 18  # distinct pre-tokens remembered; the cache starts over when full

  def __init__(self, context_length: int = 77, vocab_path: str | None = None):
    import regex

    _ftfy()  # required: fail here rather than at the first non-ASCII caption
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
    path = vocab_path or CLIP_VOCAB
    self.context_length = context_length
    self._tokens = clip_vocabulary(path)
    self._ids = {tok: i for i, tok in enumerate(self._tokens)}
    self._ranks = {pair: rank for rank, pair in enumerate(clip_merges(path))}
    alphabet = byte_alphabet()
    self._to_alphabet = dict(enumerate(alphabet))  # a str.translate table over latin-1 characters
    self._from_alphabet = {c: b for b, c in enumerate(alphabet)}
    self._pattern = regex.compile(CLIP_PATTERN, regex.IGNORECASE)
    self.sot_id = self._ids["<start_of_text>"]
    self.eot_id = self._ids["<end_of_text>"]
    self.vocab_size = len(self._tokens)
    self._specials = {"<start_of_text>": (self.sot_id,), "<end_of_text>": (self.eot_id,)}
    self._cache = dict(self._specials)

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_cache": dict(self._specials)}  # workers rebuild their own cache

  def _merge(self, symbols: list[str]) -> list[str]:
    """Merges the adjacent pair of lowest rank (every occurrence, left to right) until none is a
    merge."""
    ranks = self._ranks
    while len(symbols) > 1:
      pairs = [p for p in zip(symbols, symbols[1:]) if p in ranks]
      if not pairs:
        break
      first, second = min(pairs, key=ranks.__getitem__)
      merged, i, n = [], 0, len(symbols)
      while i < n:
        if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return symbols

  def _piece_ids(self, piece: str) -> tuple[int, ...]:
    chars = piece.encode("utf-8").decode("latin-1").translate(self._to_alphabet)
    ids = tuple(self._ids[s] for s in self._merge([*chars[:-1], chars[-1] + "</w>"]))
    if len(self._cache) >= self.cache_size:
      self._cache = dict(self._specials)
    self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """Text -> BPE ids without SOT/EOT."""
    ids, cache = [], self._cache
    for piece in self._pattern.findall(clip_clean(text)):
      hit = cache.get(piece)
      ids.extend(hit if hit is not None else self._piece_ids(piece))
    return ids

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """Texts -> int32 ids [N, context_length]."""
    return _rows(
      [[self.sot_id, *self.encode(t), self.eot_id] for t in _as_list(texts)],
      self.context_length,
      self.pad_id,
    )

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text: special tokens and padding dropped, one space between pre-tokens."""
    special = (self.pad_id, self.sot_id, self.eot_id)
    chars = "".join(self._tokens[i] for i in map(int, ids) if i not in special)
    data = b" ".join(bytes(self._from_alphabet[c] for c in word) for word in chars.split("</w>"))
    return " ".join(data.decode("utf-8", errors="replace").split())


def write_hf_clip_vocab(directory: str, vocab_path: str | None = None) -> None:
  """Writes CLIP's vocabulary as HF files (``vocab.json`` + ``merges.txt``), the names HF's
  CLIPTokenizer and ``hf`` tokenizers here read; SOT/EOT are spelled as HF spells them."""
  vocab = clip_vocabulary(vocab_path or CLIP_VOCAB)
  vocab[-2:] = ["<|startoftext|>", "<|endoftext|>"]
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n")
    f.write("\n".join(" ".join(m) for m in clip_merges(vocab_path or CLIP_VOCAB)) + "\n")


# ---- HF tokenizers, SentencePiece, WordPiece -----------------------------------------------
class HFTokenizer:
  """A tokenizer of HF's ``tokenizers`` library, in one of two forms.

  - ``tokenizer.json`` (the file, or a directory holding it): used as saved, with the special tokens
    its post-processor adds and no others, so SigLIP/T5-style tokenizers keep their own EOS and pad.
    Only padding and truncation are ours: cut to ``context_length`` (keeping its closing token, if it
    adds one, last) and pad with ``pad_id`` (default: its padding or pad token, else 0).
    ``lower_case=True`` lower-cases texts first (for tokenizers that expect it but do not do it).
    ``specials`` = [opening, closing] token (either None) replaces the post-processor's: what HF
    does when ``tokenizer_config.json`` sets ``add_bos_token`` / ``add_eos_token`` (SigLIP 2's
    Gemma files: no BOS, EOS appended).
  - a CLIP directory (``vocab.json`` + ``merges.txt``, as HF's CLIPTokenizer reads them): CLIP's BPE
    rebuilt as a ``tokenizers`` model with open_clip's cleaning (``lower_case=False`` keeps case,
    open_clip's "whitespace" cleaning), SOT/EOT and pad 0: the same ids as open_clip (its character
    classes are carried over code point by code point, see ``clip_split_pattern``).
  """

  def __init__(
    self,
    path: str,
    context_length: int = 77,
    pad_id: int | None = None,
    lower_case: bool | None = None,
    specials: Sequence[str | None] | None = None,
  ):
    from tokenizers import Tokenizer

    if context_length < 1:
      raise ValueError(f"context_length must be >= 1, got {context_length}")
    self.context_length = context_length
    self.lower_case = lower_case
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if os.path.isfile(file):
      self._clip = False
      self._tok = Tokenizer.from_file(file)
      saved_pad = (self._tok.padding or {}).get("pad_id")
    elif os.path.isdir(path) and os.path.isfile(vocab) and os.path.isfile(merges):
      import regex

      self._clip = True
      self._tok = _clip_bpe_from_files(vocab, merges)
      self._pattern = regex.compile(CLIP_PATTERN, regex.IGNORECASE)  # for literal SOT/EOT text
      self._literal = regex.compile(r"<start_of_text>|<end_of_text>", regex.IGNORECASE)
      saved_pad = None
    else:
      raise FileNotFoundError(
        f"{path}: no HF tokenizer (expected a tokenizer.json file, or a "
        "directory with tokenizer.json, or with vocab.json + merges.txt)"
      )
    self._tok.no_padding()
    self._tok.no_truncation()
    if specials is not None and not self._clip:
      self._tok.post_processor = special_tokens_template(self._tok, specials)
    if self._clip:
      self.sot_id = self._tok.token_to_id("<|startoftext|>")
      self.eot_id = self._tok.token_to_id("<|endoftext|>")
      if self.sot_id is None or self.eot_id is None:
        raise ValueError(f"{vocab}: expected '<|startoftext|>' and '<|endoftext|>' in a CLIP vocab")
      default_pad = 0
    else:
      self.sot_id, self.eot_id = self._added_specials()
      default_pad = saved_pad if saved_pad is not None else _hf_pad_token_id(self._tok, file)
    self.pad_id = pad_id if pad_id is not None else default_pad
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    unk = getattr(self._tok.model, "unk_token", None)  # (None: byte-level BPE, CLIP's)
    self.unk_id = self._tok.token_to_id(unk) if unk else None

  def _added_specials(self) -> tuple[int | None, int | None]:
    """(opening, closing) special token the post-processor adds around a text, None where none."""
    enc = self._tok.encode("a")
    mask, ids = enc.special_tokens_mask, enc.ids
    if not any(mask):
      return None, None
    if all(mask):  # nothing but specials: read a lone one as closing (EOS-only tokenizers)
      return (ids[0] if len(ids) > 1 else None), ids[-1]
    return (ids[0] if mask[0] else None), (ids[-1] if mask[-1] else None)

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """Texts -> int32 ids [N, context_length]."""
    texts = _as_list(texts)
    if self._clip:
      return _rows(self._encode_clip(texts), self.context_length, self.pad_id)
    if self.lower_case:
      texts = [t.lower() for t in texts]
    seqs = [e.ids for e in self._tok.encode_batch(texts)]
    return _rows(seqs, self.context_length, self.pad_id, keep_last=self.eot_id is not None)

  def _encode_clip(self, texts: list[str]) -> list[list[int]]:
    cleaned = [clip_clean(t, self.lower_case is not False) for t in texts]
    literal = [self._literal.search(t) is not None for t in cleaned]
    encoded = iter(
      self._tok.encode_batch(
        [t for t, lit in zip(cleaned, literal) if not lit], add_special_tokens=False
      )
    )
    return [
      [self.sot_id, *(self._encode_literal(t) if lit else next(encoded).ids), self.eot_id]
      for t, lit in zip(cleaned, literal)
    ]

  def _encode_literal(self, text: str) -> list[int]:
    """A text spelling out ``<start_of_text>``/``<end_of_text>``: open_clip reads such pre-tokens as
    SOT/EOT (or, cased otherwise, as one word), so split as open_clip does and BPE word by word."""
    special = {"<start_of_text>": self.sot_id, "<end_of_text>": self.eot_id}
    alphabet, ids = byte_alphabet(), []
    for piece in self._pattern.findall(text):
      if piece in special:
        ids.append(special[piece])
      else:
        word = "".join(alphabet[b] for b in piece.encode("utf-8"))
        ids.extend(t.id for t in self._tok.model.tokenize(word))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids if int(i) != self.pad_id])


def special_tokens_template(tok, specials: Sequence[str | None]):
  """A post-processor adding exactly ``specials`` = (opening, closing) around a text."""
  from tokenizers import processors

  bos, eos = specials
  names = [t for t in (bos, eos) if t]
  ids = {t: tok.token_to_id(t) for t in names}
  unknown = [t for t, i in ids.items() if i is None]
  if unknown:
    raise ValueError(f"special token(s) {', '.join(unknown)} are not in the tokenizer's vocabulary")
  single = " ".join([*([bos] if bos else []), "$A", *([eos] if eos else [])])
  return processors.TemplateProcessing(single=single, special_tokens=[(t, ids[t]) for t in names])


def _hf_pad_token_id(tok, file: str) -> int:
  """The pad token a saved HF tokenizer names (tokenizer_config.json / special_tokens_map.json beside
  ``file``), else a token spelled as a pad token, else 0."""
  names = []
  for side in ("tokenizer_config.json", "special_tokens_map.json"):
    side = os.path.join(os.path.dirname(os.path.abspath(file)), side)
    if os.path.isfile(side):
      with open(side, encoding="utf-8") as f:
        pad = json.load(f).get("pad_token")
      names.append(pad.get("content") if isinstance(pad, dict) else pad)
  for name in [*names, "<pad>", "[PAD]", "<|padding|>"]:
    if isinstance(name, str) and (i := tok.token_to_id(name)) is not None:
      return i
  return 0


@functools.lru_cache(maxsize=1)
def clip_split_pattern() -> str:
  """CLIP's pre-token pattern (sans SOT/EOT) for other regex engines: its letter, digit and symbol
  classes spelled out as the code point ranges the ``regex`` package gives them under open_clip's
  case-insensitive matching, so Unicode-version and case-folding differences (U+0345 is in no class,
  so dropped) cannot creep in. Takes ~0.3 s, once."""
  import regex

  blocks = [(lo, "".join(map(chr, range(lo, hi)))) for lo, hi in ((0, 0xD800), (0xE000, 0x110000))]

  def ranges(cls: str) -> str:  # (all code points but surrogates, in order: matches are spans)
    spans = []
    for lo, block in blocks:
      for m in regex.finditer(cls, block, regex.IGNORECASE):
        a, b = lo + m.start(), lo + m.end() - 1
        spans.append(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}")
    return "[" + "".join(spans) + "]"

  return (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|"
    + ranges(r"[\p{L}]+")
    + "+|"
    + ranges(r"[\p{N}]+")
    + "|"
    + ranges(r"[^\s\p{L}\p{N}]+")
    + "+"
  )


def _clip_bpe_from_files(vocab_file: str, merges_file: str):
  """CLIP's BPE as a ``tokenizers`` pipeline: CLIP's pre-tokens (unmatched characters dropped, as
  open_clip drops them), bytes to the printable alphabet, BPE with ``</w>`` word ends."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

  with open(vocab_file, encoding="utf-8") as f:
    vocab = json.load(f)
  with open(merges_file, encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [
    tuple(line.split()) for line in lines[1 if lines[0].startswith("#") else 0 :] if line.strip()
  ]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=None))
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(clip_split_pattern()), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  tok.decoder = decoders.BPEDecoder(suffix="</w>")
  return tok


class SentencePieceTokenizer:
  """SentencePiece ids (+ EOS), padded: the text input of big_vision's SigLIP models.

  As big_vision's ``tokenize(eos="sticky")`` with ``add_eos`` (truncation keeps EOS last, where SigLIP
  pools), plain truncation without. ``lower_case`` lower-cases ASCII letters only, as big_vision's
  ``tf.strings.lower`` does.
  """

  sot_id = None

  def __init__(
    self,
    model_path: str,
    context_length: int = 64,
    add_eos: bool = True,
    lower_case: bool = False,
    pad_id: int | None = None,
  ):
    import sentencepiece

    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model not found: {model_path} (a .model file)")
    if context_length < 1:
      raise ValueError(f"context_length must be >= 1, got {context_length}")
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    if add_eos and self._sp.eos_id() < 0:
      raise ValueError(f"{model_path}: the model has no EOS piece; pass add_eos=False")
    self.context_length, self.add_eos, self.lower_case = context_length, add_eos, lower_case
    self.eot_id = self._sp.eos_id() if add_eos else None
    self.pad_id = pad_id if pad_id is not None else max(self._sp.pad_id(), 0)
    self.vocab_size = self._sp.get_piece_size()
    self.unk_id = self._sp.unk_id() if self._sp.unk_id() >= 0 else None

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """Texts -> int32 ids [N, context_length]."""
    texts = _as_list(texts)
    if self.lower_case:
      texts = [t.translate(_ASCII_LOWER) for t in texts]
    seqs = [ids + [self.eot_id] if self.add_eos else ids for ids in self._sp.encode(texts)]
    return _rows(seqs, self.context_length, self.pad_id, keep_last=self.add_eos)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eot_id)])


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class WordPieceTokenizer:
  """BERT's WordPiece (Devlin et al. 2019): ``[CLS] tokens [SEP]`` then [PAD], as transformers'
  BertTokenizer (BERT normalization and pre-splitting, accents stripped when lower-casing)."""

  def __init__(self, vocab_path: str, context_length: int = 64, lower_case: bool = True):
    from tokenizers import BertWordPieceTokenizer

    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(
        f"WordPiece vocabulary not found: {vocab_path} (a vocab.txt, one token a line)"
      )
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 ([CLS] + [SEP]), got {context_length}")
    with open(vocab_path, encoding="utf-8") as f:
      missing = {"[CLS]", "[SEP]"} - {line.strip() for line in f}
    if missing:
      raise ValueError(f"{vocab_path}: a WordPiece vocabulary needs {' and '.join(sorted(missing))}")
    self._tok = BertWordPieceTokenizer(vocab_path, lowercase=lower_case)
    self._tok.no_padding()
    self._tok.no_truncation()
    self.context_length = context_length
    self.sot_id = self._tok.token_to_id("[CLS]")
    self.eot_id = self._tok.token_to_id("[SEP]")
    pad = self._tok.token_to_id("[PAD]")
    self.pad_id = 0 if pad is None else pad
    self.unk_id = self._tok.token_to_id("[UNK]")
    self.vocab_size = self._tok.get_vocab_size()

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """Texts -> int32 ids [N, context_length]."""
    return _rows(
      [e.ids for e in self._tok.encode_batch(_as_list(texts))], self.context_length, self.pad_id
    )

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids])


def unknown_fraction(tokenizer, texts: Sequence[str]) -> float:
  """The fraction of ``texts`` with at least one token the tokenizer does not know (0 for
  tokenizers without an unknown token, such as CLIP's byte-level BPE)."""
  unk = getattr(tokenizer, "unk_id", None)
  if unk is None or not texts:
    return 0.0
  return float(np.mean((tokenizer(list(texts)) == unk).any(axis=1)))


@TOKENIZERS.register("word")
def _word_tokenizer(context_length: int = 16, vocabulary: str = "synthetic") -> WordTokenizer:
  if vocabulary != "synthetic":
    raise ValueError(f"the word tokenizer knows the 'synthetic' vocabulary only, got {vocabulary!r}")
  from vlpt.data.synthetic import VOCABULARY

  return WordTokenizer(VOCABULARY, context_length)


TOKENIZERS.register("clip_bpe")(ClipBpeTokenizer)
TOKENIZERS.register("hf")(HFTokenizer)
TOKENIZERS.register("sentencepiece")(SentencePieceTokenizer)
TOKENIZERS.register("wordpiece")(WordPieceTokenizer)


def build_tokenizer(tokenizer_config: Any):
  kwargs = dict(tokenizer_config.to_dict() if hasattr(tokenizer_config, "to_dict") else tokenizer_config)
  name = kwargs.pop("name")
  return TOKENIZERS.get(name)(**kwargs)
