"""Projection heads for self-distillation (SigLIP 2, arXiv:2502.14786, Sec. 2.3; the DINO-style
head that SILC and TIPS use): MLP -> bottleneck -> L2 norm -> linear to K prototypes, no bias.

They serve pre-training only (the teacher's and the student's logits over the prototypes) and
are dropped by the open_clip / HF exports, as LocCa's decoder is. The last layer is a plain
linear map (DINO's weight normalization is left out: vlpt's choice, the input is L2-normalized).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import Dense, activation

# the keys of config.model.image.ssl_head (ViT's ssl_head argument) and their defaults (DINO's)
HEAD_DEFAULTS = {"prototypes": 65536, "hidden": 2048, "bottleneck": 256, "layers": 3}


class SSLHead(nnx.Module):
  """Features [..., din] -> prototype logits [..., prototypes] (fp32)."""

  def __init__(
    self,
    din: int,
    *,
    prototypes: int,
    hidden: int,
    bottleneck: int,
    layers: int,
    rngs: nnx.Rngs,
    act: str = "gelu",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    if layers < 1 or min(prototypes, hidden, bottleneck) < 1:
      raise ValueError(
        f"ssl_head needs layers >= 1 and positive sizes, got layers={layers}, "
        f"prototypes={prototypes}, hidden={hidden}, bottleneck={bottleneck}"
      )
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    dims = [din] + [hidden] * (layers - 1) + [bottleneck]
    mlp = []
    for i in range(layers):
      first, last = i == 0, i == layers - 1
      axes = ("embed" if first else "mlp", "proj" if last else "mlp")
      if not first and not last:
        axes = ("mlp", "proj")  # hidden -> hidden: one of the two axes unsharded
      mlp.append(Dense(dims[i], dims[i + 1], axes, **kw))
    self.mlp = nnx.List(mlp)
    self.act = activation(act)
    self.prototypes = Dense(bottleneck, prototypes, ("proj", "vocab"), use_bias=False, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.mlp):
      x = layer(x)
      if i < len(self.mlp) - 1:
        x = self.act(x)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
    return self.prototypes(x).astype(jnp.float32)
