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

:class:`NaflexStream` is what ``vlpt-train`` reads when ``config.data.train.naflex.lengths`` is
set: each process's share of every step's batch, from the training source's global shuffle, each
image cropped at a random aspect ratio (``aspect_ratios``) and kept at it, so the towers see the
mixed shapes NaFlex is for even on square data. :class:`TokenBudgetBatches` is the single-process
form over any ``{"image", "caption"}`` source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlpt.data.files import SKIP_REASONS
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

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None


def mean_batch(token_budget: int, lengths: Sequence[int], multiple_of: int = 1) -> float:
  """The expected examples per step (each length equally likely): what ``examples/s`` counts."""
  sizes = batch_sizes(token_budget, lengths, multiple_of)
  return sum(sizes.values()) / len(sizes)


def native_crop(image: np.ndarray, rng: np.random.Generator, scale, ratios) -> np.ndarray:
  """A crop of ``scale`` of the area at an aspect ratio (width / height) drawn log-uniformly from
  ``ratios``, not resized: the image keeps that shape, as NaFlex takes it."""
  h, w = image.shape[:2]
  area = h * w * rng.uniform(*scale)
  ratio = float(np.exp(rng.uniform(np.log(ratios[0]), np.log(ratios[1]))))
  ch = int(round(min(h, max(1.0, np.sqrt(area / ratio)))))
  cw = int(round(min(w, max(1.0, np.sqrt(area * ratio)))))
  y = int(rng.integers(0, h - ch + 1))
  x = int(rng.integers(0, w - cw + 1))
  return image[y : y + ch, x : x + cw]


class NaflexStream:
  """This process's share of token-budget NaFlex batches (``vlpt-train`` with NaFlex training).

  ``dataset[q]`` is the example at global stream position ``q`` (the training source's global
  shuffle, repeated). Step ``s`` draws its sequence length ``n`` (:func:`sequence_length`), takes
  the next ``b = sizes[n]`` positions, and this process keeps rows ``[p*b/P, (p+1)*b/P)``, so the
  processes agree on every batch without talking. The state is ``(step, position)``; a run
  restarted at step ``s`` recomputes the position from the lengths of the steps before it.
  """

  def __init__(
    self,
    dataset: Any,
    *,
    tokenizer: Callable[[list[str]], np.ndarray],
    patch: int,
    token_budget: int,
    lengths: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    multiple_of: int = 1,
    aspect_ratios: Sequence[float] = (0.5, 2.0),
    crop_scale: Sequence[float] = (0.9, 1.0),
    random_caption: bool = True,
    start_step: int = 0,
    threads: int = 1,
  ):
    self.dataset, self.tokenizer, self.patch = dataset, tokenizer, int(patch)
    self.threads = max(1, int(threads))  # examples prepared at once (PIL resizes release the GIL)
    self._pool = None
    self.lengths = tuple(int(n) for n in lengths)
    self.sizes = batch_sizes(token_budget, self.lengths, max(multiple_of, process_count))
    for n, b in self.sizes.items():
      if b % process_count:
        raise ValueError(f"a batch of {b} at length {n} does not split over {process_count} processes")
    self.mean, self.std, self.seed = mean, std, int(seed)
    self.p, self.P = int(process_index), int(process_count)
    self.aspect_ratios, self.crop_scale = tuple(aspect_ratios), tuple(crop_scale)
    self.random_caption = random_caption
    self.step, self.position = 0, 0
    self.set_state({"step": start_step, "position": self.position_at(start_step)})

  def position_at(self, step: int) -> int:
    """The stream position where step ``step`` begins."""
    return sum(self.sizes[sequence_length(s, self.lengths, self.seed)] for s in range(step))

  def get_state(self) -> dict[str, int]:
    return {"step": self.step, "position": self.position}

  def set_state(self, state: dict[str, int]) -> None:
    self.step, self.position = int(state["step"]), int(state["position"])

  def __iter__(self):
    return self

  def _example(self, q: int, n: int) -> tuple[dict[str, np.ndarray], str, np.ndarray | None]:
    example = self.dataset[q]
    rng = np.random.default_rng([self.seed, 0x4E41, q])
    caption, captions = example["caption"], example.get("captions")
    if self.random_caption and captions:
      caption = captions[rng.integers(len(captions))]
    image = native_crop(np.asarray(example["image"], np.uint8), rng, self.crop_scale, self.aspect_ratios)
    parts = naflex_example(image, patch=self.patch, max_num_patches=n, mean=self.mean, std=self.std)
    return parts, caption, example.get("skips")

  def __next__(self) -> dict[str, np.ndarray]:
    n = sequence_length(self.step, self.lengths, self.seed)
    b = self.sizes[n]
    share = b // self.P
    start = self.position + self.p * share
    rows = range(start, start + share)
    if self.threads > 1:
      if self._pool is None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vlpt-naflex")
      examples = list(self._pool.map(lambda q: self._example(q, n), rows))
    else:
      examples = [self._example(q, n) for q in rows]
    batch = {k: np.stack([e[0][k] for e in examples]) for k in examples[0][0]}
    batch["text"] = np.asarray(self.tokenizer([e[1] for e in examples]), np.int32)
    skips = [e[2] for e in examples if e[2] is not None]
    if skips:  # examples a file source replaced: summed by SkipCounter (vlpt.data.pipeline)
      batch["skips"] = np.sum(skips, axis=0).astype(np.int32).reshape(1, len(SKIP_REASONS))
    self.step, self.position = self.step + 1, self.position + b
    return batch

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None
