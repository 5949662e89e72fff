"""Inference preprocessing of PIL images, per model family.

- "shortest" (OpenAI CLIP, open_clip, HF CLIPImageProcessor): resize the shorter side to
  ``image_size`` (bicubic), center-crop a square.
- "squash" (SigLIP; big_vision and HF SiglipImageProcessor): resize straight to
  ``image_size`` x ``image_size`` (bilinear), no crop.
- "naflex" (SigLIP 2's NaFlex, Tschannen et al. 2025, Sec. 2.4.2; HF Siglip2ImageProcessor):
  keep the aspect ratio, resize (bilinear) to the largest whole patch grid of at most
  ``max_num_patches`` patches, cut into patches and pad to ``max_num_patches``.
Then scale to [0, 1] and standardize with the family's mean/std; output ``[H, W, 3]`` float32,
or for "naflex" the dict of :func:`naflex_patches` (a batch of one).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from vlpt.data.normalization import OPENAI_MEAN, OPENAI_STD

RESIZE_MODES = ("shortest", "squash", "naflex")


def naflex_size(height: int, width: int, patch: int, max_num_patches: int) -> tuple[int, int]:
  """The (height, width) in pixels, whole patches, at least one per side, an image is resized to.

  The largest scale whose rounded-up patch grid fits ``max_num_patches``, found by the same
  bisection as transformers' Siglip2ImageProcessor (scale in [1e-6, 100], stopped at a 1e-5
  interval, the lower end kept), so that the grids are equal, including at ties.
  """

  def side(scale: float, n: int) -> int:
    return max(patch, math.ceil(n * scale / patch) * patch)

  lo, hi = 1e-6, 100.0
  while hi - lo >= 1e-5:
    mid = (lo + hi) / 2
    if (side(mid, height) / patch) * (side(mid, width) / patch) <= max_num_patches:
      lo = mid
    else:
      hi = mid
  return side(lo, height), side(lo, width)


def naflex_patches(image: np.ndarray, patch: int, max_num_patches: int) -> dict[str, np.ndarray]:
  """[h, w, C] (h, w multiples of ``patch``) -> a NaFlex dict with a batch axis of 1:
  ``pixel_values`` [1, max_num_patches, patch*patch*C] (row-major patches, each flattened y, x,
  channel; zeros after the real ones), ``pixel_attention_mask`` [1, max_num_patches] int32 (1 =
  real), ``spatial_shapes`` [1, 2] int32 (rows, columns): transformers' names and layout."""
  h, w, c = image.shape
  gh, gw = h // patch, w // patch
  if gh * gw > max_num_patches:
    raise ValueError(f"{gh}x{gw} patches exceed max_num_patches={max_num_patches}")
  x = image.reshape(gh, patch, gw, patch, c).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
  values = np.zeros((1, max_num_patches, patch * patch * c), np.float32)
  values[0, : gh * gw] = x
  mask = np.zeros((1, max_num_patches), np.int32)
  mask[0, : gh * gw] = 1
  return {
    "pixel_values": values,
    "pixel_attention_mask": mask,
    "spatial_shapes": np.asarray([[gh, gw]], np.int32),
  }


INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  image_size: int
  mean: tuple[float, float, float] = OPENAI_MEAN
  std: tuple[float, float, float] = OPENAI_STD
  resize_mode: str = "shortest"
  interpolation: str = "bicubic"
  # "naflex" only: the patch size and the default number of patches (HF ``max_num_patches``)
  patch_size: int | None = None
  max_num_patches: int | None = None

  def __post_init__(self):
    if self.resize_mode not in RESIZE_MODES:
      raise ValueError(f"unknown resize_mode {self.resize_mode!r}; choose one of {RESIZE_MODES}")
    if self.resize_mode == "naflex" and not (self.patch_size and self.max_num_patches):
      raise ValueError("resize_mode='naflex' needs patch_size and max_num_patches")
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {INTERPOLATIONS}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def __call__(self, image, max_num_patches: int | None = None):
    """A PIL image -> [H, W, 3] float32; for "naflex", the dict of :func:`naflex_patches` with
    ``max_num_patches`` (default: the model's) slots."""
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[
      self.interpolation
    ]
    image = image.convert("RGB")
    s = self.image_size
    if self.resize_mode == "naflex":
      n = int(max_num_patches or self.max_num_patches)
      w, h = image.size
      th, tw = naflex_size(h, w, self.patch_size, n)
      if (tw, th) != (w, h):
        image = image.resize((tw, th), resample=resample)
      return naflex_patches(self._normalize(image), self.patch_size, n)
    if max_num_patches is not None:
      raise ValueError("max_num_patches is for NaFlex models (resize_mode='naflex')")
    if self.resize_mode == "squash":
      image = image.resize((s, s), resample=resample)
    else:
      w, h = image.size
      if w <= h:
        size = (s, int(s * h / w))
      else:
        size = (int(s * w / h), s)
      if size != (w, h):
        image = image.resize(size, resample=resample)
      w, h = image.size
      left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
      image = image.crop((left, top, left + s, top + s))
    return self._normalize(image)

  def _normalize(self, image) -> np.ndarray:
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def batch(self, images: Sequence, max_num_patches: int | None = None):
    """Stacked [B, H, W, 3]; for "naflex", one dict with batch axis B (all padded to the same
    ``max_num_patches``)."""
    if self.resize_mode == "naflex":
      out = [self(im, max_num_patches) for im in images]
      return {k: np.concatenate([o[k] for o in out]) for k in out[0]}
    return np.stack([self(im) for im in images])
