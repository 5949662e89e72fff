"""Position-embedding resizing, so weights serve other image sizes and text lengths.

Image grids are resampled bicubically in 2-D (class-token rows kept as they are), as is standard
when fine-tuning ViTs at a new resolution (Dosovitskiy et al. 2021, Sec. 3.2); text positions
are truncated, or extended by repeating the last learned position.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def resize_image_positions(pos: np.ndarray, new_grid: int, *, prefix: int) -> np.ndarray:
  """[prefix + g*g, W] -> [prefix + new_grid**2, W]."""
  n, w = pos.shape
  grid = int(round(math.sqrt(n - prefix)))
  if grid * grid != n - prefix:
    raise ValueError(f"position embedding of {n - prefix} tokens is not a square grid")
  if grid == new_grid:
    return pos
  g = jnp.asarray(pos[prefix:], jnp.float32).reshape(grid, grid, w)
  # bicubic as open_clip's resize_pos_embed; antialiased, as torch's interpolate(antialias=True)
  # there, when the grid shrinks (no effect when it grows)
  g = jax.image.resize(g, (new_grid, new_grid, w), method="bicubic", antialias=True)
  return np.concatenate([pos[:prefix], np.asarray(g).reshape(-1, w).astype(pos.dtype)], axis=0)


def resize_text_positions(pos: np.ndarray, length: int) -> np.ndarray:
  """[L, W] -> [length, W]."""
  if length <= pos.shape[0]:
    return pos[:length]
  extra = np.repeat(pos[-1:], length - pos.shape[0], axis=0)
  return np.concatenate([pos, extra], axis=0)


def resize_model(
  model: dict,
  flat: dict[str, np.ndarray],
  *,
  image_size: int | None = None,
  context_length: int | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
  """Adapts a (model config, canonical params) pair to a new image size and/or text length."""
  from vlpt.models.sizes import parse_vit

  model = {**model, "image": dict(model["image"]), "text": dict(model["text"])}
  flat = dict(flat)
  if image_size and image_size != model["image"]["image_size"]:
    _, patch = parse_vit(model["image"]["variant"])
    if image_size % patch:
      raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch}")
    prefix = int(model["image"].get("class_token", True))
    key = "image.positional_embedding"
    flat[key] = resize_image_positions(flat[key], image_size // patch, prefix=prefix)
    model["image"]["image_size"] = image_size
  if context_length and context_length != model["text"]["context_length"]:
    if model["text"].get("embed_cls"):
      raise ValueError("resizing the text length of a CoCa text tower is not supported")
    key = "text.positional_embedding"
    flat[key] = resize_text_positions(flat[key], context_length)
    model["text"]["context_length"] = context_length
  return model, flat
