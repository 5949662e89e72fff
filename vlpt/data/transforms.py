"""Image decoding and crops for file-backed sources (WebDataset shards, TFDS records).

- :func:`decode_image`: encoded bytes -> uint8 ``[H, W, 3]``; JPEGs are decoded with PIL's
  ``draft()`` at the smallest DCT scale (1/8, 1/4, 1/2, 1) whose output is still at least what
  the crop needs, which is what makes JPEG decoding fast for large photographs.
- :class:`RandomResizedCrop` (training): an area fraction in ``scale`` and an aspect ratio in
  ``ratio`` (log-uniform), resized to a square; its randomness comes from a NumPy generator the
  caller seeds by stream position, so any worker or process draws the same crop.
- :class:`CenterCrop` (evaluation, or training with ``scale == (1, 1)``): the shorter side resized
  to the target, then a center square. A square image already at the target size is returned as
  is (so lossless shards reproduce in-memory sources bit for bit).
- :func:`color_jitter` and horizontal flips (``config.data.train.color_jitter`` / ``flip``): also
  drawn from a caller-seeded generator, so a resumed run repeats them exactly.

Images stay uint8; normalization happens on device.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np

INTERPOLATIONS = ("bicubic", "bilinear")


def _resample(name: str):
  from PIL import Image

  if name not in INTERPOLATIONS:
    raise ValueError(f"unknown interpolation {name!r}; choose one of {INTERPOLATIONS}")
  return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[name]


def decode_image(data: bytes, min_short_side: int | None = None):
  """Encoded image bytes -> an RGB PIL image, drafted (JPEG) to a short side >= ``min_short_side``.

  Raises on undecodable or truncated data (the image is fully loaded here).
  """
  from PIL import Image

  image = Image.open(io.BytesIO(data))
  if min_short_side and image.format == "JPEG":
    w, h = image.size
    short = min(w, h)
    if short > min_short_side:
      f = min_short_side / short
      # draft picks the largest reduction whose output is >= the requested size in both dims
      image.draft("RGB", (max(1, math.ceil(w * f)), max(1, math.ceil(h * f))))
  image.load()
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


@dataclasses.dataclass(frozen=True)
class CenterCrop:
  """Resize the shorter side to ``size``, then crop the center square."""

  size: int
  interpolation: str = "bicubic"

  def min_short_side(self) -> int:
    return self.size

  def __call__(self, image, rng: np.random.Generator | None = None) -> np.ndarray:
    del rng
    s = self.size
    w, h = image.size
    if (w, h) != (s, s):
      scale = s / min(w, h)
      nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
      if (nw, nh) != (w, h):
        image = image.resize((nw, nh), resample=_resample(self.interpolation))
      left, top = (nw - s) // 2, (nh - s) // 2
      image = image.crop((left, top, left + s, top + s))
    return np.asarray(image, np.uint8)


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
  """torchvision-style RandomResizedCrop, seeded by the caller's generator.

  ``draft`` (JPEG DCT-scaled decoding) and ``reducing_gap`` (integer pre-shrink) are the fast
  paths; ``draft=False, reducing_gap=None`` resizes exactly as torchvision's PIL path does (the
  input benchmark's ``--same-work``).
  """

  size: int
  scale: tuple[float, float] = (0.9, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  interpolation: str = "bicubic"
  draft: bool = True
  reducing_gap: float | None = 3.0

  def __post_init__(self):
    lo, hi = self.scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
    _resample(self.interpolation)

  def min_short_side(self) -> int:
    if not self.draft:
      return 0  # decode at full size
    # the smallest crop side is about sqrt(min area * min ratio) of the short side
    return math.ceil(self.size / math.sqrt(self.scale[0] * min(1.0, self.ratio[0])))

  def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    area = width * height
    log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
    for _ in range(10):
      target = area * rng.uniform(*self.scale)
      aspect = math.exp(rng.uniform(*log_ratio))
      w = int(round(math.sqrt(target * aspect)))
      h = int(round(math.sqrt(target / aspect)))
      if 0 < w <= width and 0 < h <= height:
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        return left, top, left + w, top + h
    # fallback: the central crop at the closest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < self.ratio[0]:
      w, h = width, int(round(width / self.ratio[0]))
    elif in_ratio > self.ratio[1]:
      h, w = height, int(round(height * self.ratio[1]))
    else:
      w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h

  def __call__(self, image, rng: np.random.Generator) -> np.ndarray:
    s = self.size
    box = self.box(*image.size, rng)
    # reducing_gap: large downscales first shrink by an integer factor (box filter), then resample
    resample = _resample(self.interpolation)
    image = image.resize((s, s), resample=resample, box=box, reducing_gap=self.reducing_gap)
    return np.asarray(image, np.uint8)


def train_crop(size: int, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "bicubic"):
  """The training crop: RandomResizedCrop, or CenterCrop when ``scale`` is ``(1, 1)``."""
  scale = tuple(float(x) for x in scale)
  if scale == (1.0, 1.0):
    return CenterCrop(size, interpolation)
  return RandomResizedCrop(size, scale, tuple(float(x) for x in ratio), interpolation)


def _gray(x: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma of float RGB ``[..., 3]`` (as torchvision's rgb_to_grayscale)."""
  return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
  """Random brightness, contrast and saturation of a uint8 ``[H, W, 3]`` image, in random order.

  Each factor is drawn uniformly from ``[max(0, 1 - strength), 1 + strength]`` (torchvision's
  ``ColorJitter(strength, strength, strength)`` without hue): brightness scales the pixels,
  contrast blends with the mean gray level, saturation with the per-pixel gray image; values are
  clipped to [0, 255] after each step.
  """
  strength = float(strength)
  if strength <= 0:
    return image
  lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
  factors = rng.uniform(lo, hi, 3)
  x = np.asarray(image, np.float32)
  for op in rng.permutation(3):
    f = np.float32(factors[op])
    if op == 0:  # brightness
      x = x * f
    elif op == 1:  # contrast
      mean = _gray(x).mean()
      x = (x - mean) * f + mean
    else:  # saturation
      gray = _gray(x)[..., None]
      x = (x - gray) * f + gray
    x = np.clip(x, 0.0, 255.0)
  return np.rint(x).astype(np.uint8)


def augment(
  image: np.ndarray, rng: np.random.Generator, *, flip: bool = False, jitter: float = 0.0
) -> np.ndarray:
  """Optional horizontal flip (probability 1/2) then :func:`color_jitter`, from ``rng``."""
  if flip and rng.random() < 0.5:
    image = np.ascontiguousarray(image[:, ::-1])
  if jitter > 0:
    image = color_jitter(image, jitter, rng)
  return image
