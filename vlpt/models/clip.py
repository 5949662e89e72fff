"""CLIP dual encoder (Radford et al. 2021): image and text towers into one embedding space.

The learnable temperature is stored as log-scale (init ln(1/0.07), Sec. 2.5) and clamped to
[0, ln 100] after every update; an optional logit bias serves SigLIP-style sigmoid losses
(Zhai et al. 2023, Sec. 3.2: init scale 10, bias -10).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.partitioning import annotated
from vlpt.models.text import TextTransformer
from vlpt.models.vit import VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
  return DTYPES[name]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class CLIP(nnx.Module):
  """Image tower + text tower + temperature (+ optional bias).

  ``image`` and ``text`` are the towers' keyword arguments (see ``VisionTransformer`` and
  ``TextTransformer``); ``config.model.image`` / ``config.model.text`` hold them.
  """

  def __init__(
    self,
    *,
    image: dict,
    text: dict,
    embed_dim: int,
    rngs: nnx.Rngs,
    init_logit_scale: float = math.log(1 / 0.07),
    max_logit_scale: float = math.log(100),
    init_logit_bias: float | None = None,
    attention: str = "xla",
    dtype: str = "float32",
    param_dtype: str = "float32",
  ):
    kw = dict(
      dtype=dtype_of(dtype),
      param_dtype=dtype_of(param_dtype),
      embed_dim=embed_dim,
      rngs=rngs,
      attention=attention,
    )
    self.image = VisionTransformer(**image, **kw)
    self.text = TextTransformer(**text, **kw)
    self.logit_scale = annotated(jnp.asarray(init_logit_scale, jnp.float32))
    self.logit_bias = (
      annotated(jnp.asarray(init_logit_bias, jnp.float32)) if init_logit_bias is not None else None
    )
    self.max_logit_scale = max_logit_scale

  def encode_image(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    """L2-normalized fp32 image embeddings (``dropout_rng``: patch dropout, training only)."""
    return l2_normalize(self.image(images, dropout_rng=dropout_rng))

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """L2-normalized fp32 text embeddings."""
    return l2_normalize(self.text(ids))

  def logit_params(self) -> dict[str, jax.Array]:
    """The exponentiated temperature and, if the model has one, the logit bias."""
    out = {"logit_scale": jnp.exp(self.logit_scale[...])}
    if self.logit_bias is not None:
      out["logit_bias"] = self.logit_bias[...]
    return out

  def __call__(self, images: jax.Array, ids: jax.Array) -> dict[str, jax.Array]:
    return {
      "image_emb": self.encode_image(images),
      "text_emb": self.encode_text(ids),
      **self.logit_params(),
    }

  def apply_constraints(self) -> None:
    """Clamps the log temperature to [0, ln max_scale] (CLIP Sec. 2.5), after each update."""
    self.logit_scale[...] = jnp.clip(self.logit_scale[...], 0.0, self.max_logit_scale)
