"""Vision Transformer image tower (Dosovitskiy et al. 2021) covering the layouts vlpt imports.

patchify (a stride-p convolution, done as reshape + matmul) -> [class token] -> + learned
positions -> [patch dropout] -> [ln_pre] -> pre-LN blocks -> ln_post -> pool -> [projection].

- CLIP / open_clip: class token, ln_pre, token pooling, projection without bias.
- SigLIP (big_vision, HF): no class token, patch bias, no ln_pre, MAP pooling, no projection.
- CoCa (open_clip): attentional pooler with many queries; the first pooled query, projected, is
  the contrastive embedding and the rest are the captioner's image tokens.
- NaFlex (SigLIP 2, Tschannen et al. 2025, arXiv 2502.14786, Sec. 2.4.2; after NaViT, Dehghani et
  al. 2023): ``naflex=True`` also takes images at their native aspect ratio as a dict of patches
  (:data:`NAFLEX_KEYS`, transformers' names): a variable number of patches up to the batch's
  sequence length, padding masked in attention and in the MAP head, and the learned square
  position grid resized to each image's (h, w) patch grid (bilinear, antialiased when shrinking).
- Other resolutions (any tower): [B, H, W, 3] images of another patch grid than the training one
  get the position grid resized the same way (SigLIP 2's self-distillation feeds local crops
  smaller than the training size, Sec. 2.3); the training size uses the positions as they are.
- Self-distillation (``ssl_head``, SigLIP 2 Sec. 2.3): a learned mask token that replaces the
  patch embeddings selected by ``patch_mask`` before positions are added (masked prediction,
  TIPS / iBOT), and the projection heads (:mod:`vlpt.models.ssl_head`): ``ssl_global`` on the
  pooled embedding, ``ssl_patch`` on the patch tokens. Pre-training only: exports drop them.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import BlockOptions, Dense, LayerNorm, Transformer
from vlpt.models.partitioning import constrain, param
from vlpt.models.pooling import AttentionalPooler, MapHead
from vlpt.models.sizes import parse_vit, tower_size
from vlpt.models.ssl_head import HEAD_DEFAULTS, SSLHead

POOLINGS = ("token", "gap", "map", "coca")
# a NaFlex batch: patches [B, N, p*p*3] (row-major within a patch: y, x, channel), which of the N
# are real [B, N] (1) or padding (0), and each image's patch grid (rows, columns) [B, 2]
NAFLEX_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")


def _triangle_weights(index: jax.Array, size: jax.Array, grid: int) -> jax.Array:
  """Weights [..., grid] that resample a ``grid``-long axis to ``size`` samples, at output ``index``.

  The linear (triangle) filter with half-pixel centers, widened by the scale factor when shrinking
  (antialiasing) and normalized to sum to 1: torch's ``interpolate(mode="bilinear",
  align_corners=False, antialias=True)`` along one axis, as SigLIP 2 resizes its positions.
  ``index`` and ``size`` broadcast together; they may be traced (one size per image under jit).
  """
  size = size.astype(jnp.float32)
  scale = grid / size
  support = jnp.maximum(scale, 1.0)
  center = (index.astype(jnp.float32) + 0.5) * scale  # in source coordinates (pixel edges at ints)
  src = jnp.arange(grid, dtype=jnp.float32) + 0.5
  w = jnp.maximum(0.0, 1.0 - jnp.abs(src - center[..., None]) / support[..., None])
  return w / jnp.sum(w, axis=-1, keepdims=True)


def resize_positions(grid: jax.Array, spatial_shapes: jax.Array, length: int) -> jax.Array:
  """A learned position grid [G, G, D] resized to each image's patch grid -> [B, length, D].

  Image b's (h, w) = ``spatial_shapes[b]`` positions are laid out row-major in the first h*w
  slots; the padding slots after them get the first position (never attended to, but finite).
  Both axes' weights are computed per image (traced sizes: one compilation serves every aspect
  ratio), and the separable resize is one matmul over the flattened grid.
  """
  g, d = grid.shape[0], grid.shape[-1]
  shapes = spatial_shapes.astype(jnp.int32)
  rows, cols = shapes[:, :1], shapes[:, 1:]  # [B, 1]
  n = jnp.arange(length, dtype=jnp.int32)[None, :]
  real = n < rows * cols
  r = jnp.where(real, n // jnp.maximum(cols, 1), 0)
  c = jnp.where(real, n % jnp.maximum(cols, 1), 0)
  wr = _triangle_weights(r, rows, g)  # [B, N, G]
  wc = _triangle_weights(c, cols, g)
  weights = (wr[..., :, None] * wc[..., None, :]).reshape(*wr.shape[:2], g * g)
  flat = grid.reshape(g * g, d).astype(jnp.float32)
  out = jnp.einsum("bnk,kd->bnd", weights, flat, precision=jax.lax.Precision.HIGHEST)
  return out.astype(grid.dtype)


class VisionTransformer(nnx.Module):
  """Images [B, H, W, 3] (already normalized) -> embeddings [B, embed_dim].

  With ``naflex=True`` the input may also be a NaFlex dict (:data:`NAFLEX_KEYS`); the position
  grid then holds (image_size / patch)^2 entries that are resized to each image's patch grid
  (SigLIP 2's NaFlex: ``image_size`` = sqrt(HF ``num_patches``) * patch).
  """

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
    naflex: bool = False,
    attention: str = "xla",
    ssl_head: dict | None = None,
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
    if naflex and (class_token or pool not in ("map", "gap")):
      raise ValueError(
        "naflex=True needs a tower without class token pooled by 'map' or 'gap' (SigLIP 2's layout)"
      )
    self.naflex = naflex
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
    if not ssl_head:
      self.mask_token = self.ssl_global = self.ssl_patch = None
    else:
      unknown = sorted(set(ssl_head) - set(HEAD_DEFAULTS))
      if unknown:
        raise ValueError(f"unknown ssl_head keys {unknown}; choose from {sorted(HEAD_DEFAULTS)}")
      if pool == "coca":
        raise ValueError("ssl_head needs the patch tokens: use pool 'map', 'gap' or 'token'")
      head = {**HEAD_DEFAULTS, **ssl_head, "act": act, **kw}
      self.mask_token = nnx.Param(param(normal, "embed")(rngs.params(), (w,), param_dtype))
      self.ssl_global = SSLHead(embed_dim if proj else pool_dim, rngs=rngs, **head)
      self.ssl_patch = SSLHead(w, rngs=rngs, **head)

  def patchify(self, images: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, rows*cols, p*p*C], patches in row-major order (H, W: multiples of the
    patch; the training size gives grid*grid patches)."""
    b, h, w, c = images.shape
    p = self.patch
    if h % p or w % p:
      raise ValueError(f"{h}x{w} images are not a whole number of {p}x{p} patches")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)

  def positions(self, rows: int, cols: int) -> jax.Array:
    """The position embeddings [T, D] (class token's first) for a rows x cols patch grid: the
    learned ones at the training grid, else the grid resized (bilinear, antialiased when
    shrinking, as NaFlex's :func:`resize_positions`)."""
    pos = self.positional_embedding[...]
    if (rows, cols) == (self.grid, self.grid):
      return pos
    prefix = int(self.class_token)
    grid = pos[prefix:].reshape(self.grid, self.grid, -1)
    resized = resize_positions(grid, jnp.asarray([[rows, cols]], jnp.int32), rows * cols)[0]
    return jnp.concatenate([pos[:prefix], resized], axis=0)

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
    self,
    images: jax.Array | Mapping,
    *,
    dropout_rng: jax.Array | None = None,
    patch_mask: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """(pooled embedding [B, embed_dim] before normalization, tokens [B, T, D] after ln_post).

    ``images``: [B, H, W, 3], or a NaFlex dict (:data:`NAFLEX_KEYS`) for a ``naflex`` tower; then
    ``tokens`` are [B, N, D] with the padding slots' values meaningless.

    ``dropout_rng`` (a key, or one key per example) turns patch dropout on (training only);
    ``patch_mask`` [B, N] bool: those patches read the mask token (see :meth:`encode`).
    """
    x, valid = self.encode(images, dropout_rng=dropout_rng, patch_mask=patch_mask)
    mask = None if valid is None else valid[:, None, None, :]
    prefix = int(self.class_token)
    if self.pool == "coca":
      x = self.ln_post(self.attn_pool(x))
      pooled, tokens = x[:, 0], x[:, 1:]
    elif self.pool == "map":
      x = self.ln_post(x)
      pooled, tokens = self.map_head(x, mask=mask), x[:, prefix:]
    elif self.final_ln_after_pool:
      pooled = x[:, 0] if self.pool == "token" else self._mean(x[:, prefix:], valid)
      pooled, tokens = self.ln_post(pooled), x[:, prefix:]
    else:
      x = self.ln_post(x)
      pooled = x[:, 0] if self.pool == "token" else self._mean(x[:, prefix:], valid)
      tokens = x[:, prefix:]
    if self.proj is not None:
      pooled = self.proj(pooled)
    return pooled, tokens

  def patch_tokens(self, images: jax.Array | Mapping) -> jax.Array:
    """The patch tokens [B, N, width] before pooling, in ``patchify``'s row-major order.

    What dense tasks read (LocCa's decoder, Wan et al. 2024; the ``dense_probe`` evaluation): the
    tokens ``features`` returns for token / gap / MAP pooling (after ``ln_post`` unless it follows
    the pooling), and the transformer's output for CoCa, whose ``tokens`` are its pooler's
    queries instead. A NaFlex batch's padding slots hold meaningless values.
    """
    x, _ = self.encode(images)
    x = x[:, int(self.class_token) :]
    if self.pool != "coca" and not self.final_ln_after_pool:
      x = self.ln_post(x)
    return x

  def encode(
    self,
    images: jax.Array | Mapping,
    *,
    dropout_rng: jax.Array | None = None,
    patch_mask: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array | None]:
    """(the transformer's output tokens [B, T, width], class token first if any; which of a
    NaFlex batch's N patches are real [B, N], None for plain images): everything before pooling.

    ``patch_mask`` [B, N] bool (a tower with ``ssl_head``): the selected patches' embeddings are
    replaced by the learned mask token before positions are added (iBOT / TIPS masking), so the
    model must infer them from their position and the visible patches."""
    dt = self.dtype
    valid = None  # [B, N] real patches of a NaFlex batch
    if (
      self.naflex
      and not isinstance(images, Mapping)
      and images.shape[1:3] != (self.grid * self.patch,) * 2
    ):
      images = self.as_naflex(images)  # another resolution or aspect ratio: positions resized
    if isinstance(images, Mapping):
      patches, valid, positions = self._naflex_inputs(images)
    else:
      p = self.patch
      patches = self.patchify(images.astype(dt))
      positions = self.positions(images.shape[1] // p, images.shape[2] // p)
    kernel = self.patch_embed[...].astype(dt).reshape(-1, self.patch_embed.shape[-1])
    x = jnp.dot(patches.astype(dt), kernel)
    if self.patch_bias is not None:
      x = x + self.patch_bias[...].astype(dt)
    if patch_mask is not None:
      if self.mask_token is None:
        raise ValueError("patch_mask needs a tower with a mask token (config.model.image.ssl_head)")
      x = jnp.where(patch_mask[..., None], self.mask_token[...].astype(dt), x)
    if self.class_embedding is not None:
      cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + positions.astype(dt)
    if dropout_rng is not None and self.patch_dropout > 0:
      if valid is not None:
        raise ValueError("patch dropout is not supported on NaFlex (padded) batches")
      x = self._drop_patches(x, dropout_rng)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    if self.ln_pre is not None:
      x = self.ln_pre(x)
    mask = None if valid is None else valid[:, None, None, :]  # keys: padding never attended to
    return self.transformer(x, mask=mask), valid

  @staticmethod
  def _mean(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Mean over tokens, over the real ones only in a NaFlex batch."""
    if valid is None:
      return x.mean(axis=1)
    w = valid.astype(x.dtype)[..., None]
    return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)

  def as_naflex(self, images: jax.Array) -> dict[str, jax.Array]:
    """[B, H, W, 3] images (H, W multiples of the patch) as a NaFlex dict without padding."""
    b, h, w, c = images.shape
    p = self.patch
    if h % p or w % p:
      raise ValueError(f"{h}x{w} images are not a whole number of {p}x{p} patches")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return {
      "pixel_values": x.reshape(b, (h // p) * (w // p), p * p * c),
      "pixel_attention_mask": jnp.ones((b, (h // p) * (w // p)), jnp.int32),
      "spatial_shapes": jnp.tile(jnp.asarray([[h // p, w // p]], jnp.int32), (b, 1)),
    }

  def _naflex_inputs(self, batch: Mapping) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A NaFlex dict -> (patches [B, N, p*p*3], valid [B, N] bool, positions [B, N, D])."""
    if not self.naflex:
      raise ValueError(
        "this image tower takes [B, H, W, 3] images; a dict of patches needs a NaFlex tower "
        "(config.model.image.naflex=True)"
      )
    missing = [k for k in NAFLEX_KEYS if k not in batch]
    if missing:
      raise ValueError(f"a NaFlex batch needs {', '.join(NAFLEX_KEYS)}; missing {', '.join(missing)}")
    patches = jnp.asarray(batch["pixel_values"])
    b, n, dim = patches.shape
    if dim != self.patch * self.patch * 3:
      raise ValueError(
        f"NaFlex patches of {dim} values; this tower's patch is {self.patch}x{self.patch}x3"
      )
    valid = jnp.asarray(batch["pixel_attention_mask"]).astype(bool)
    grid = self.positional_embedding[...].reshape(self.grid, self.grid, -1)
    positions = resize_positions(grid, jnp.asarray(batch["spatial_shapes"]), n)
    return patches, valid, positions

  def __call__(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    return self.features(images, dropout_rng=dropout_rng)[0]
