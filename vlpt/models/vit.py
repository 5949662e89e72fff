"""Vision Transformer image tower (Dosovitskiy et al. 2021) covering the layouts vlpt imports.

patchify (a stride-p convolution, done as reshape + matmul) -> [class token] -> + learned
positions -> [patch dropout] -> [ln_pre] -> pre-LN blocks -> ln_post -> pool -> [projection].

- CLIP / open_clip: class token, ln_pre, token pooling, projection without bias.
- SigLIP (big_vision, HF): no class token, patch bias, no ln_pre, MAP pooling, no projection.
- CoCa (open_clip): attentional pooler with many queries; the first pooled query, projected, is
  the contrastive embedding and the rest are the captioner's image tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import BlockOptions, Dense, LayerNorm, Transformer
from vlpt.models.partitioning import constrain, param
from vlpt.models.pooling import AttentionalPooler, MapHead
from vlpt.models.sizes import parse_vit, tower_size

POOLINGS = ("token", "gap", "map", "coca")


class VisionTransformer(nnx.Module):
  """Images [B, H, W, 3] (already normalized) -> embeddings [B, embed_dim]."""

  def __init__(
    self,
    variant: str,
    *,
    image_size: int,
    embed_dim: int,
    rngs: nnx.Rngs,
    pool: str = "token",
    act: str = "gelu",
    class_token: bool = True,
    ln_pre: bool = True,
    final_ln_after_pool: bool = False,
    patch_bias: bool = False,
    proj: bool = True,
    proj_bias: bool = False,
    norm_eps: float = 1e-5,
    layer_scale: float | None = None,
    patch_dropout: float = 0.0,
    pooler_heads: int | None = None,
    pooler_queries: int = 256,
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    mlp_dim: int | None = None,
    scan: bool = False,
    remat: str = "none",
    attention: str = "xla",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    size, patch = parse_vit(variant)
    size = tower_size(size, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim)
    if image_size % patch:
      raise ValueError(
        f"image size {image_size} (config.data.image_size) is not divisible by "
        f"the patch size {patch} of {variant!r}"
      )
    if pool not in POOLINGS:
      raise ValueError(f"unknown image pooling {pool!r}; choose one of {POOLINGS}")
    if pool == "token" and not class_token:
      raise ValueError("pool='token' needs class_token=True (or use pool='gap' / 'map')")
    if not 0.0 <= patch_dropout < 1.0:
      raise ValueError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
    self.patch, self.grid, self.pool = patch, image_size // patch, pool
    self.class_token, self.final_ln_after_pool = class_token, final_ln_after_pool
    self.patch_dropout = patch_dropout
    self.dtype = dtype
    w = size.width
    scale = w**-0.5
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    opts = BlockOptions(act=act, norm_eps=norm_eps, layer_scale=layer_scale, attention=attention, **kw)
    self.patch_embed = nnx.Param(
      param(nnx.initializers.lecun_normal(), "patch", "patch", "channels", "embed")(
        rngs.params(), (patch, patch, 3, w), param_dtype
      )
    )
    self.patch_bias = (
      nnx.Param(param(nnx.initializers.zeros_init(), "embed")(rngs.params(), (w,), param_dtype))
      if patch_bias
      else None
    )
    normal = nnx.initializers.normal(stddev=scale)
    self.class_embedding = (
      nnx.Param(param(normal, "embed")(rngs.params(), (w,), param_dtype)) if class_token else None
    )
    self.positional_embedding = nnx.Param(
      param(normal, "length", "embed")(rngs.params(), (int(class_token) + self.grid**2, w), param_dtype)
    )
    self.ln_pre = LayerNorm(w, eps=norm_eps, **kw) if ln_pre else None
    self.transformer = Transformer(
      w, size.depth, size.heads, size.mlp_dim, opts=opts, rngs=rngs, scan=scan, remat=remat
    )
    pool_dim = embed_dim if pool == "coca" else w
    self.ln_post = LayerNorm(pool_dim, eps=norm_eps, **kw)
    self.map_head = (
      MapHead(
        w,
        pooler_heads or size.heads,
        size.mlp_dim,
        act=act,
        norm_eps=norm_eps,
        rngs=rngs,
        attention=attention,
        **kw,
      )
      if pool == "map"
      else None
    )
    self.attn_pool = (
      AttentionalPooler(
        embed_dim,
        w,
        pooler_heads or 8,
        pooler_queries,
        norm_eps=norm_eps,
        rngs=rngs,
        attention=attention,
        **kw,
      )
      if pool == "coca"
      else None
    )
    if not proj and pool_dim != embed_dim:
      raise ValueError(
        f"an image tower without projection needs embed_dim == width ({pool_dim}), "
        f"got embed_dim={embed_dim}"
      )
    self.proj = (
      Dense(
        pool_dim,
        embed_dim,
        ("embed", "proj"),
        rngs=rngs,
        use_bias=proj_bias,
        kernel_init=nnx.initializers.normal(stddev=scale),
        **kw,
      )
      if proj
      else None
    )

  def patchify(self, images: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, grid*grid, p*p*C], patches in row-major order."""
    b, h, w, c = images.shape
    p, g = self.patch, self.grid
    if h != g * p or w != g * p:
      raise ValueError(f"expected {g * p}x{g * p} images, got {h}x{w}")
    x = images.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, p * p * c)

  def _drop_patches(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    """FLIP-style patch dropout (Li et al. 2023, Sec. 3): keep a random subset of patch tokens."""
    prefix = int(self.class_token)
    n = x.shape[1] - prefix
    keep = max(1, int(n * (1.0 - self.patch_dropout)))
    if rng.ndim == 0:
      noise = jax.random.uniform(rng, (x.shape[0], n))
    else:  # one key per example (the trainer's, so micro-batches drop the same patches)
      noise = jax.vmap(lambda k: jax.random.uniform(k, (n,)))(rng)
    order = jnp.argsort(noise, axis=-1)[:, :keep]
    kept = jnp.take_along_axis(x[:, prefix:], order[..., None], axis=1)
    return jnp.concatenate([x[:, :prefix], kept], axis=1)

  def features(
    self, images: jax.Array, *, dropout_rng: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """(pooled embedding [B, embed_dim] before normalization, tokens [B, T, D] after ln_post).

    ``dropout_rng`` (a key, or one key per example) turns patch dropout on (training only).
    """
    dt = self.dtype
    patches = self.patchify(images.astype(dt))
    kernel = self.patch_embed[...].astype(dt).reshape(-1, self.patch_embed.shape[-1])
    x = jnp.dot(patches, kernel)
    if self.patch_bias is not None:
      x = x + self.patch_bias[...].astype(dt)
    if self.class_embedding is not None:
      cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.positional_embedding[...].astype(dt)
    if dropout_rng is not None and self.patch_dropout > 0:
      x = self._drop_patches(x, dropout_rng)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    if self.ln_pre is not None:
      x = self.ln_pre(x)
    x = self.transformer(x)
    prefix = int(self.class_token)
    if self.pool == "coca":
      x = self.ln_post(self.attn_pool(x))
      pooled, tokens = x[:, 0], x[:, 1:]
    elif self.pool == "map":
      x = self.ln_post(x)
      pooled, tokens = self.map_head(x), x[:, prefix:]
    elif self.final_ln_after_pool:
      pooled = x[:, 0] if self.pool == "token" else x[:, prefix:].mean(axis=1)
      pooled, tokens = self.ln_post(pooled), x[:, prefix:]
    else:
      x = self.ln_post(x)
      pooled = x[:, 0] if self.pool == "token" else x[:, prefix:].mean(axis=1)
      tokens = x[:, prefix:]
    if self.proj is not None:
      pooled = self.proj(pooled)
    return pooled, tokens

  def __call__(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    return self.features(images, dropout_rng=dropout_rng)[0]
