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
from typing import Any, Iterable, Sequence

import numpy as np

from vlpt.registry import Registry

TOKENIZERS: Registry = Registry("tokenizer")

_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
  """Lower-cased word-level tokenizer over a fixed vocabulary (for the built-in dataset).

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
    return _rows([[self.sot_id, *self.encode(t), self.eot_id] for t in _as_list(texts)],
                 self.context_length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    words = {i: w for w, i in self._ids.items()}
    return " ".join(words[int(i)] for i in ids if int(i) in words)


def _as_list(texts: str | Sequence[str]) -> list[str]:
  return [texts] if isinstance(texts, str) else list(texts)


def _rows(sequences: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
  """Pads/truncates id lists to ``length``; a truncated row keeps its closing token last."""
  out = np.full((len(sequences), length), pad_id, np.int32)
  for row, ids in enumerate(sequences):
    ids = list(ids)
    if len(ids) > length:
      ids = ids[: length - 1] + ids[-1:]
    out[row, : len(ids)] = ids
  return out


# ---- CLIP byte-level BPE -------------------------------------------------------------------
CLIP_VOCAB = os.path.join(os.path.dirname(__file__), "assets", "bpe_simple_vocab_16e6.txt.gz")
CLIP_NUM_MERGES = 49152 - 256 - 2  # the merges CLIP's 49408-token vocabulary uses
# words, single digits and runs of other symbols; contractions split as in GPT-2/CLIP
CLIP_PATTERN = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                r"[^\s\p{L}\p{N}]+")


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
  """One printable unicode character per byte value (bytes that print as themselves keep their
  character; the rest are moved to code points from 256 up), so BPE never sees raw bytes."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
          *range(ord("\xae"), ord("\xff") + 1)]
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
    lines = f.read().split("\n")[1: CLIP_NUM_MERGES + 1]
  return tuple(tuple(line.split()) for line in lines)


def clip_vocabulary(path: str = CLIP_VOCAB) -> list[str]:
  """Token strings in id order: bytes, bytes + end-of-word, merges, then SOT and EOT.

  Byte tokens are ordered as CLIP numbers them: the self-printing bytes first, then the moved
  ones (i.e. by their character's code point).
  """
  alphabet = sorted(byte_alphabet(), key=ord)
  return (alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in clip_merges(path)]
          + ["<start_of_text>", "<end_of_text>"])


def clip_clean(text: str) -> str:
  """CLIP's text normalization: ftfy repair, HTML unescaping, whitespace collapse, lower case."""
  import ftfy
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return re.sub(r"\s+", " ", text).strip().lower()


class ClipBpeTokenizer:
  """CLIP's BPE tokenizer (Radford et al. 2021; Sennrich et al. 2016's BPE over UTF-8 bytes).

  Same ids as open_clip's: SOT 49406, EOT 49407, pad 0, truncation keeps EOT.
  """

  pad_id = 0

  def __init__(self, context_length: int = 77, vocab_path: str | None = None):
    import regex
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
    self.context_length = context_length
    vocab = clip_vocabulary(vocab_path or CLIP_VOCAB)
    self._ids = {tok: i for i, tok in enumerate(vocab)}
    self._tokens = vocab
    self._ranks = {m: i for i, m in enumerate(clip_merges(vocab_path or CLIP_VOCAB))}
    self._alphabet = byte_alphabet()
    self._bytes = {c: b for b, c in enumerate(self._alphabet)}
    self._pattern = regex.compile(CLIP_PATTERN, regex.IGNORECASE)
    self.sot_id = self._ids["<start_of_text>"]
    self.eot_id = self._ids["<end_of_text>"]
    self.vocab_size = len(vocab)
    self._word = functools.lru_cache(maxsize=200_000)(self._merge_word)

  def _merge_word(self, word: str) -> tuple[str, ...]:
    """Applies the merges to one pre-token, lowest rank first, until none applies."""
    if word in ("<start_of_text>", "<end_of_text>"):
      return (word,)
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
      ranked = [(self._ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
      ranked = [(r, i) for r, i in ranked if r is not None]
      if not ranked:
        break
      best = min(ranked)[0]
      pair = next((parts[i], parts[i + 1]) for r, i in ranked if r == best)
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return tuple(parts)

  def encode(self, text: str) -> list[int]:
    """Text -> BPE ids without SOT/EOT."""
    ids = []
    for piece in self._pattern.findall(clip_clean(text)):
      word = "".join(self._alphabet[b] for b in piece.encode("utf-8"))
      ids.extend(self._ids[t] for t in self._word(word))
    return ids

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    return _rows([[self.sot_id, *self.encode(t), self.eot_id] for t in _as_list(texts)],
                 self.context_length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text (special tokens and padding dropped)."""
    special = (self.pad_id, self.sot_id, self.eot_id)
    chars = "".join(self._tokens[int(i)] for i in ids if int(i) not in special)
    out = bytearray()
    for word in chars.split("</w>"):
      out.extend(bytes(self._bytes[c] for c in word))
      out.extend(b" ")
    return re.sub(" +", " ", out.decode("utf-8", errors="replace")).strip()


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
  """A tokenizer from HF's ``tokenizers`` library: a ``tokenizer.json`` (any family, its own
  special tokens kept), or a CLIP ``vocab.json`` + ``merges.txt`` directory (CLIP's BPE, with
  SOT/EOT added and pad 0 as open_clip; same ids as open_clip except for texts that spell out
  ``<start_of_text>`` literally, which open_clip alone treats as a special token)."""

  def __init__(self, path: str, context_length: int = 77, pad_id: int | None = None):
    from tokenizers import Tokenizer
    self.context_length = context_length
    self._clip = False
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "tokenizer.json")):
      vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
      if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        raise FileNotFoundError(f"{path}: expected tokenizer.json, or vocab.json + merges.txt")
      self._tok = _clip_bpe_from_files(vocab, merges)
      self._clip = True
    else:
      file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
      if not os.path.isfile(file):
        raise FileNotFoundError(f"tokenizer file not found: {file}")
      self._tok = Tokenizer.from_file(file)
    self._tok.no_padding()
    self._tok.no_truncation()
    find = self._tok.token_to_id
    self.sot_id = find("<|startoftext|>")
    self.eot_id = find("<|endoftext|>") if self._clip or find("<|endoftext|>") is not None \
        else find("</s>") if find("</s>") is not None else find("[SEP]")
    if pad_id is None:
      pad_id = 0 if self._clip else next(
          (i for t in ("<pad>", "[PAD]", "<|endoftext|>") if (i := find(t)) is not None), 0)
    self.pad_id = pad_id
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    texts = _as_list(texts)
    if self._clip:
      seqs = [[self.sot_id, *e.ids, self.eot_id]
              for e in self._tok.encode_batch([clip_clean(t) for t in texts],
                                              add_special_tokens=False)]
    else:
      seqs = [e.ids for e in self._tok.encode_batch(texts)]
    return _rows(seqs, self.context_length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids if int(i) != self.pad_id])


def _clip_bpe_from_files(vocab_file: str, merges_file: str):
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  with open(vocab_file, encoding="utf-8") as f:
    vocab = json.load(f)
  with open(merges_file, encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>",
                             unk_token=None))
  pattern = CLIP_PATTERN.replace("<start_of_text>|<end_of_text>|", "")
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.BPEDecoder(suffix="</w>")
  return tok


class SentencePieceTokenizer:
  """SentencePiece ids (+ EOS), padded: the text input of big_vision's SigLIP models."""

  sot_id = None

  def __init__(self, model_path: str, context_length: int = 64, add_eos: bool = True,
               lower_case: bool = False, pad_id: int | None = None):
    import sentencepiece
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    self.context_length, self.add_eos, self.lower_case = context_length, add_eos, lower_case
    self.eot_id = self._sp.eos_id() if add_eos else None
    self.pad_id = pad_id if pad_id is not None else max(self._sp.pad_id(), 0)
    self.vocab_size = self._sp.get_piece_size()

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    texts = [t.lower() if self.lower_case else t for t in _as_list(texts)]
    seqs = [ids + ([self.eot_id] if self.add_eos else []) for ids in self._sp.encode(texts)]
    return _rows(seqs, self.context_length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eot_id)])


class WordPieceTokenizer:
  """BERT's WordPiece (Devlin et al. 2019): ``[CLS] tokens [SEP]`` then [PAD]."""

  def __init__(self, vocab_path: str, context_length: int = 64, lower_case: bool = True):
    from tokenizers import BertWordPieceTokenizer
    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(f"WordPiece vocabulary not found: {vocab_path}")
    self._tok = BertWordPieceTokenizer(vocab_path, lowercase=lower_case)
    self._tok.no_padding()
    self._tok.no_truncation()
    self.context_length = context_length
    self.sot_id = self._tok.token_to_id("[CLS]")
    self.eot_id = self._tok.token_to_id("[SEP]")
    self.pad_id = self._tok.token_to_id("[PAD]") or 0
    self.vocab_size = self._tok.get_vocab_size()

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    return _rows([e.ids for e in self._tok.encode_batch(_as_list(texts))], self.context_length,
                 self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids])


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
  kwargs = dict(tokenizer_config.to_dict() if hasattr(tokenizer_config, "to_dict")
                else tokenizer_config)
  name = kwargs.pop("name")
  return TOKENIZERS.get(name)(**kwargs)
