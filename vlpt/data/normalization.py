"""Pixel normalization: uint8 images -> the standardized floats the towers read.

The training pipeline ships uint8 batches to the devices (4x less transfer than floats); the
jitted step, the evaluators and a teacher standardize them on device with one of these families'
constants (``config.data.normalization``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# OpenAI CLIP's dataset statistics (Radford et al. 2021, released preprocessing); open_clip and
# HF CLIPImageProcessor use them too
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP / big_vision: [-1, 1]
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

NORMALIZATION = {
  "clip": (OPENAI_MEAN, OPENAI_STD),
  "siglip": (SIGLIP_MEAN, SIGLIP_STD),
  "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def check_normalization(name: str) -> None:
  if name not in NORMALIZATION:
    raise ValueError(
      f"config.data.normalization must be one of {', '.join(NORMALIZATION)}, got {name!r}"
    )


def standardize(images_uint8: jax.Array, mean, std) -> jax.Array:
  """uint8 [.., 3] -> float32 scaled to [0, 1], then ``(x - mean) / std`` per channel."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def normalize_images(images_uint8: jax.Array, normalization: str) -> jax.Array:
  """uint8 images standardized with the named family's constants (:data:`NORMALIZATION`)."""
  mean, std = NORMALIZATION[normalization]
  return standardize(images_uint8, mean, std)
