"""Tokenizers, chosen by ``config.data.tokenizer.name``.

All produce CLIP-style fixed-length id rows: ``[SOT, tokens..., EOT, 0, 0, ...]`` with pad id 0
and EOT the largest id, so a text tower can pool at ``argmax(ids)``. Truncation keeps EOT last.
"""

from __future__ import annotations

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
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), self.context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_id, *self.encode(text)][: self.context_length - 1] + [self.eot_id]
      out[row, : len(ids)] = ids
    return out


@TOKENIZERS.register("word")
def _word_tokenizer(context_length: int = 16, vocabulary: str = "synthetic") -> WordTokenizer:
  if vocabulary != "synthetic":
    raise ValueError(f"the word tokenizer knows the 'synthetic' vocabulary only, got {vocabulary!r}")
  from vlpt.data.synthetic import VOCABULARY
  return WordTokenizer(VOCABULARY, context_length)


def build_tokenizer(tokenizer_config: Any):
  kwargs = dict(tokenizer_config.to_dict() if hasattr(tokenizer_config, "to_dict")
                else tokenizer_config)
  name = kwargs.pop("name")
  return TOKENIZERS.get(name)(**kwargs)
