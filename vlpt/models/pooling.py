"""Attention pooling heads: learned queries attend over a tower's tokens.

- :class:`MapHead`: multihead attention pooling as in big_vision's ViT and SigLIP (Zhai et al.
  2022, "Scaling Vision Transformers", Sec. 3.2; Lee et al. 2019's PMA): one probe attends, then
  a residual MLP.
- :class:`AttentionalPooler`: CoCa's pooler (Yu et al. 2022, Sec. 3.2) in open_clip's layout:
  n queries (LayerNorm'ed) attend over LayerNorm'ed tokens; no MLP. CoCa uses many queries for the
  captioner's context and the first one as the contrastive embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import Attention, LayerNorm, Mlp
from vlpt.models.partitioning import param


class MapHead(nnx.Module):
  """Tokens [B, N, W] -> pooled [B, W] (big_vision MAPHead / HF SigLIP pooling head)."""

  def __init__(
    self,
    width: int,
    heads: int,
    mlp_dim: int,
    *,
    act: str,
    norm_eps: float,
    rngs: nnx.Rngs,
    attention: str = "xla",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.probe = nnx.Param(
      param(nnx.initializers.xavier_uniform(), "queries", "embed")(
        rngs.params(), (1, width), param_dtype
      )
    )
    self.attn = Attention(width, heads, rngs=rngs, attention=attention, **kw)
    self.ln = LayerNorm(width, eps=norm_eps, **kw)
    self.mlp = Mlp(width, mlp_dim, act=act, rngs=rngs, **kw)
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """``mask`` [B, 1, 1, N]: which tokens the probe may attend to (e.g. not padding)."""
    q = jnp.broadcast_to(self.probe[...].astype(self.dtype), (x.shape[0], *self.probe.shape))
    y = self.attn(q, kv=x, mask=mask)
    y = y + self.mlp(self.ln(y))
    return y[:, 0]


class AttentionalPooler(nnx.Module):
  """Tokens [B, N, context_dim] -> [B, queries, dim] (open_clip's CoCa AttentionalPooler)."""

  def __init__(
    self,
    dim: int,
    context_dim: int,
    heads: int,
    queries: int,
    *,
    norm_eps: float,
    rngs: nnx.Rngs,
    attention: str = "xla",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.query = nnx.Param(
      param(nnx.initializers.normal(1.0), "queries", "embed")(rngs.params(), (queries, dim), param_dtype)
    )
    self.attn = Attention(dim, heads, kv_dim=context_dim, rngs=rngs, attention=attention, **kw)
    self.ln_q = LayerNorm(dim, eps=norm_eps, **kw)
    self.ln_k = LayerNorm(context_dim, eps=norm_eps, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    q = self.ln_q(self.query[...])
    q = jnp.broadcast_to(q, (x.shape[0], *q.shape))
    return self.attn(q, kv=self.ln_k(x))
