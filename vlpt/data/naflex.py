"""Token-budget batches of NaFlex examples: several sequence lengths in one run.

SigLIP 2 (Tschannen et al. 2025, arXiv 2502.14786, Sec. 2.4.2) trains its NaFlex variant at
sequence lengths 128 / 256 / 576 / 784 / 1024, each image resized at its native aspect ratio to
at most that many patches (NaViT, Dehghani et al. 2023, varies the resolution per batch the same
way). Here each step draws one sequence length N and takes as many examples as a fixed token
budget allows (B = budget // N, a multiple of ``multiple_of`` so every data-parallel device gets
whole rows), so a step costs about the same whatever N.

The draw is a pure function of (seed, step), and the examples are consecutive positions of a
per-epoch permutation, so every process agrees on N without talking, and ``get_state`` /
``set_state`` resume exactly. The batches are the NaFlex dicts the towers take
(:data:`vlpt.models.vit.NAFLEX_KEYS`) plus ``text`` when a tokenizer is given.

Not yet wired into ``vlpt-train`` (its step assumes one global batch shape); this is the data
side, usable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlpt.data.preprocess import naflex_patches, naflex_size

PAPER_SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)


def batch_sizes(token_budget: int, lengths: Sequence[int], multiple_of: int = 1) -> dict[int, int]:
  """Sequence length -> the largest batch size, a multiple of ``multiple_of``, within the budget."""
  out = {}
  for n in lengths:
    b = (token_budget // n) // multiple_of * multiple_of
    if b < 1:
      raise ValueError(
        f"a token budget of {token_budget} holds no batch of {multiple_of} x {n} patches; raise it"
      )
    out[int(n)] = b
  return out


def sequence_length(step: int, lengths: Sequence[int], seed: int) -> int:
  """The sequence length of ``step``: uniform over ``lengths``, a function of (seed, step) only."""
  return int(lengths[np.random.default_rng([seed, step, 0x4E46]).integers(len(lengths))])


def naflex_example(
  image: np.ndarray, *, patch: int, max_num_patches: int, mean: Sequence[float], std: Sequence[float]
) -> dict[str, np.ndarray]:
  """uint8 [H, W, 3] -> one NaFlex example (no batch axis): resized (bilinear, antialiased) at its
  aspect ratio to at most ``max_num_patches`` patches, normalized, patchified, padded."""
  from PIL import Image

  h, w = image.shape[:2]
  th, tw = naflex_size(h, w, patch, max_num_patches)
  pil = Image.fromarray(np.asarray(image, np.uint8))
  if (th, tw) != (h, w):
    pil = pil.resize((tw, th), resample=Image.BILINEAR)
  x = (np.asarray(pil, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return {k: v[0] for k, v in naflex_patches(x, patch, max_num_patches).items()}


class TokenBudgetBatches:
  """Batches of a random-access source of ``{"image": uint8 [H, W, 3], "caption": str}``, each of
  one sequence length drawn per step, sized by the token budget (see the module docstring)."""

  def __init__(
    self,
    source: Any,
    *,
    patch: int,
    token_budget: int,
    lengths: Sequence[int] = PAPER_SEQUENCE_LENGTHS,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    seed: int = 0,
    multiple_of: int = 1,
    tokenizer: Callable[[list[str]], np.ndarray] | None = None,
  ):
    self.source, self.patch, self.lengths = source, patch, tuple(int(n) for n in lengths)
    self.sizes = batch_sizes(token_budget, self.lengths, multiple_of)
    if max(self.sizes.values()) > len(source):
      raise ValueError(f"a batch of {max(self.sizes.values())} exceeds the source ({len(source)})")
    self.mean, self.std, self.seed, self.tokenizer = mean, std, seed, tokenizer
    self.step, self.position = 0, 0  # the next step, and how many examples were taken

  def get_state(self) -> dict[str, int]:
    return {"step": self.step, "position": self.position}

  def set_state(self, state: dict[str, int]) -> None:
    self.step, self.position = int(state["step"]), int(state["position"])

  def _index(self, position: int) -> int:
    epoch, offset = divmod(position, len(self.source))
    order = np.random.default_rng([self.seed, epoch, 0x5045]).permutation(len(self.source))
    return int(order[offset])

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    n = sequence_length(self.step, self.lengths, self.seed)
    b = self.sizes[n]
    examples = [self.source[self._index(self.position + i)] for i in range(b)]
    parts = [
      naflex_example(e["image"], patch=self.patch, max_num_patches=n, mean=self.mean, std=self.std)
      for e in examples
    ]
    batch = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    if self.tokenizer is not None:
      batch["text"] = np.asarray(self.tokenizer([e["caption"] for e in examples]))
    self.step, self.position = self.step + 1, self.position + b
    return batch
