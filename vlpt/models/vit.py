"""Vision Transformer image tower (Dosovitskiy et al. 2021) in CLIP's layout.

patchify (a stride-p convolution, done as reshape + matmul) -> prepend a class token -> add
learned positions -> ln_pre -> pre-LN blocks -> ln_post -> pool -> linear projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import Dense, LayerNorm, Transformer
from vlpt.models.partitioning import constrain, param
from vlpt.models.sizes import parse_vit

POOLINGS = ("token", "gap")


class VisionTransformer(nnx.Module):
  """Images [B, H, W, 3] (already normalized) -> embeddings [B, embed_dim]."""

  def __init__(self, variant: str, *, image_size: int, embed_dim: int, rngs: nnx.Rngs,
               pool: str = "token", act: str = "gelu", dtype=jnp.float32,
               param_dtype=jnp.float32):
    size, patch = parse_vit(variant)
    if image_size % patch:
      raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch}")
    if pool not in POOLINGS:
      raise ValueError(f"unknown image pooling {pool!r}; choose one of {POOLINGS}")
    self.patch = patch
    self.grid = image_size // patch
    self.pool = pool
    self.dtype = dtype
    w = size.width
    scale = w ** -0.5
    self.patch_embed = nnx.Param(param(nnx.initializers.lecun_normal(), "patch", "patch",
                                       "channels", "embed")(rngs.params(), (patch, patch, 3, w),
                                                            param_dtype))
    normal = nnx.initializers.normal(stddev=scale)
    self.class_embedding = nnx.Param(param(normal, "embed")(rngs.params(), (w,), param_dtype))
    self.positional_embedding = nnx.Param(param(normal, "length", "embed")(
        rngs.params(), (1 + self.grid ** 2, w), param_dtype))
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.ln_pre = LayerNorm(w, **kw)
    self.transformer = Transformer(w, size.depth, size.heads, size.mlp_dim, act=act, rngs=rngs,
                                   **kw)
    self.ln_post = LayerNorm(w, **kw)
    self.proj = Dense(w, embed_dim, ("embed", "proj"), rngs=rngs, use_bias=False,
                      kernel_init=nnx.initializers.normal(stddev=scale), **kw)

  def patchify(self, images: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, grid*grid, p*p*C], patches in row-major order."""
    b, h, w, c = images.shape
    p, g = self.patch, self.grid
    if h != g * p or w != g * p:
      raise ValueError(f"expected {g * p}x{g * p} images, got {h}x{w}")
    x = images.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, p * p * c)

  def __call__(self, images: jax.Array) -> jax.Array:
    dt = self.dtype
    patches = self.patchify(images.astype(dt))
    kernel = self.patch_embed[...].astype(dt).reshape(-1, self.patch_embed.shape[-1])
    x = jnp.dot(patches, kernel)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(dt)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    x = self.transformer(self.ln_pre(x))
    pooled = x[:, 0] if self.pool == "token" else x[:, 1:].mean(axis=1)
    return self.proj(self.ln_post(pooled))
