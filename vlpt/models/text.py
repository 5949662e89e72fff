"""Transformer text towers: CLIP causal, BERT-style bidirectional, SigLIP, CoCa's unimodal part.

token + learned position embeddings -> pre-LN blocks -> ln_final -> pool -> [projection].

Pooling (``pool``): "eot" takes the features at ``argmax(ids)`` (CLIP: EOT is the largest id);
"eos" at the first ``eos_id``; "first" (BERT-style CLS) or "last" (SigLIP: texts are padded to a
fixed length and the last position is read, Zhai et al. 2023); "map" (multihead attention pooling
over the non-padding tokens, as big_vision's text towers offer). ``embed_cls`` appends a learned
CLS token whose output is the embedding (CoCa, Yu et al. 2022, Sec. 3.2); the other outputs are
the decoder's input tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import BlockOptions, Dense, LayerNorm, Transformer
from vlpt.models.partitioning import constrain, param
from vlpt.models.pooling import MapHead
from vlpt.models.sizes import parse_text, tower_size

TEXT_POOLINGS = ("eot", "eos", "first", "last", "map")
CLS_MASKS = ("legacy", "correct")


class TextTransformer(nnx.Module):
  """Token ids [B, L] -> embeddings [B, embed_dim]."""

  def __init__(
    self,
    variant: str,
    *,
    vocab_size: int,
    context_length: int,
    embed_dim: int,
    rngs: nnx.Rngs,
    act: str = "gelu",
    causal: bool = True,
    pool: str = "eot",
    eos_id: int | None = None,
    mask_padding: bool = False,
    pad_id: int = 0,
    proj: bool = True,
    proj_bias: bool = False,
    norm_eps: float = 1e-5,
    layer_scale: float | None = None,
    embed_cls: bool = False,
    cls_mask: str = "legacy",
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
    size = tower_size(parse_text(variant), width=width, depth=depth, heads=heads, mlp_dim=mlp_dim)
    if pool not in TEXT_POOLINGS:
      raise ValueError(f"unknown text pooling {pool!r}; choose one of {TEXT_POOLINGS}")
    if pool == "eos" and eos_id is None:
      raise ValueError("text pool='eos' needs eos_id")
    if cls_mask not in CLS_MASKS:
      raise ValueError(f"unknown cls_mask {cls_mask!r}; choose one of {CLS_MASKS}")
    w = size.width
    self.context_length, self.causal, self.pool = context_length, causal, pool
    self.eos_id, self.mask_padding, self.pad_id = eos_id, mask_padding, pad_id
    self.cls_mask = cls_mask
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    opts = BlockOptions(act=act, norm_eps=norm_eps, layer_scale=layer_scale, attention=attention, **kw)
    self.token_embedding = nnx.Param(
      param(nnx.initializers.normal(0.02), "vocab", "embed")(rngs.params(), (vocab_size, w), param_dtype)
    )
    self.cls_emb = (
      nnx.Param(param(nnx.initializers.normal(0.01), "embed")(rngs.params(), (w,), param_dtype))
      if embed_cls
      else None
    )
    self.positional_embedding = nnx.Param(
      param(nnx.initializers.normal(0.01), "length", "embed")(
        rngs.params(), (context_length + int(embed_cls), w), param_dtype
      )
    )
    self.transformer = Transformer(
      w, size.depth, size.heads, size.mlp_dim, opts=opts, rngs=rngs, scan=scan, remat=remat
    )
    self.ln_final = LayerNorm(w, eps=norm_eps, **kw)
    self.map_head = (
      MapHead(
        w, size.heads, size.mlp_dim, act=act, norm_eps=norm_eps, rngs=rngs, attention=attention, **kw
      )
      if pool == "map"
      else None
    )
    if not proj and w != embed_dim:
      raise ValueError(
        f"a text tower without projection needs embed_dim == width ({w}), got embed_dim={embed_dim}"
      )
    self.proj = (
      Dense(
        w,
        embed_dim,
        ("embed", "proj"),
        rngs=rngs,
        use_bias=proj_bias,
        kernel_init=nnx.initializers.normal(stddev=w**-0.5),
        **kw,
      )
      if proj
      else None
    )

  def _mask(self, ids: jax.Array) -> jax.Array | None:
    """Key mask [B, 1, 1 or Q, K] hiding padding (and handling CoCa's appended CLS), or None."""
    if self.cls_emb is None and not self.mask_padding:
      return None
    valid = ids != self.pad_id
    if self.cls_emb is not None:
      ones = jnp.ones((ids.shape[0], 1), bool)
      # open_clip's released CoCa weights were trained with the CLS slot of the mask at the front
      # ("legacy"): key j >= 1 is visible iff token j-1 is not padding.
      valid = jnp.concatenate([valid, ones] if self.cls_mask == "correct" else [ones, valid], 1)
    return valid[:, None, None, :]

  def features(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(pooled embedding [B, embed_dim] before normalization, token features [B, L, W])."""
    length = ids.shape[1]
    if length > self.context_length:
      raise ValueError(f"text length {length} exceeds the context length {self.context_length}")
    dt = self.dtype
    x = jnp.take(self.token_embedding[...], ids, axis=0).astype(dt)
    if self.cls_emb is not None:
      cls = jnp.broadcast_to(self.cls_emb[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([x, cls], axis=1)
    x = x + self.positional_embedding[...][: x.shape[1]].astype(dt)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    x = self.transformer(x, causal=self.causal, mask=self._mask(ids))
    if self.cls_emb is not None:
      pooled, tokens = self.ln_final(x[:, -1]), x[:, :-1]
    else:
      x = self.ln_final(x)
      tokens = x
      if self.pool == "first":
        pooled = x[:, 0]
      elif self.pool == "last":
        pooled = x[:, -1]
      elif self.pool == "map":
        pooled = self.map_head(x, mask=(ids != self.pad_id)[:, None, None, :])
      else:
        where = (
          jnp.argmax(ids, axis=-1) if self.pool == "eot" else jnp.argmax(ids == self.eos_id, axis=-1)
        )
        pooled = jnp.take_along_axis(x, where[:, None, None], axis=1)[:, 0]
    if self.proj is not None:
      pooled = self.proj(pooled)
    return pooled, tokens

  def __call__(self, ids: jax.Array) -> jax.Array:
    return self.features(ids)[0]
