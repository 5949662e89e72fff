"""Inference preprocessing of PIL images, per model family.

- "shortest" (OpenAI CLIP, open_clip, HF CLIPImageProcessor): resize the shorter side to
  ``image_size`` (bicubic), center-crop a square.
- "squash" (SigLIP; big_vision and HF SiglipImageProcessor): resize straight to
  ``image_size`` x ``image_size`` (bilinear), no crop.
Then scale to [0, 1] and standardize with the family's mean/std; output ``[H, W, 3]`` float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vlpt.data.normalization import OPENAI_MEAN, OPENAI_STD

RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  image_size: int
  mean: tuple[float, float, float] = OPENAI_MEAN
  std: tuple[float, float, float] = OPENAI_STD
  resize_mode: str = "shortest"
  interpolation: str = "bicubic"

  def __post_init__(self):
    if self.resize_mode not in RESIZE_MODES:
      raise ValueError(f"unknown resize_mode {self.resize_mode!r}; choose one of {RESIZE_MODES}")
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {INTERPOLATIONS}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def __call__(self, image) -> np.ndarray:
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[
      self.interpolation
    ]
    image = image.convert("RGB")
    s = self.image_size
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
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def batch(self, images: Sequence) -> np.ndarray:
    return np.stack([self(im) for im in images])
