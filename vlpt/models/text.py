"""Causal text transformer tower in CLIP's layout (Radford et al. 2021, Sec. 2.4).

token + learned position embeddings -> pre-LN blocks with a causal mask -> ln_final -> the
features at the end-of-text token -> linear projection. EOT is the largest id in CLIP's
vocabulary, so its position is argmax(ids) — tokenizers in vlpt keep that invariant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import Dense, LayerNorm, Transformer
from vlpt.models.partitioning import constrain, param
from vlpt.models.sizes import parse_text


class TextTransformer(nnx.Module):
  """Token ids [B, L] -> embeddings [B, embed_dim]."""

  def __init__(self, variant: str, *, vocab_size: int, context_length: int, embed_dim: int,
               rngs: nnx.Rngs, act: str = "gelu", dtype=jnp.float32, param_dtype=jnp.float32):
    size = parse_text(variant)
    w = size.width
    self.context_length = context_length
    self.dtype = dtype
    self.token_embedding = nnx.Param(param(nnx.initializers.normal(0.02), "vocab", "embed")(
        rngs.params(), (vocab_size, w), param_dtype))
    self.positional_embedding = nnx.Param(param(nnx.initializers.normal(0.01), "length", "embed")(
        rngs.params(), (context_length, w), param_dtype))
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.transformer = Transformer(w, size.depth, size.heads, size.mlp_dim, act=act, rngs=rngs,
                                   **kw)
    self.ln_final = LayerNorm(w, **kw)
    self.proj = Dense(w, embed_dim, ("embed", "proj"), rngs=rngs, use_bias=False,
                      kernel_init=nnx.initializers.normal(stddev=w ** -0.5), **kw)

  def __call__(self, ids: jax.Array) -> jax.Array:
    length = ids.shape[1]
    if length > self.context_length:
      raise ValueError(f"text length {length} exceeds the context length {self.context_length}")
    dt = self.dtype
    x = jnp.take(self.token_embedding[...], ids, axis=0).astype(dt)
    x = x + self.positional_embedding[...][:length].astype(dt)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    x = self.ln_final(self.transformer(x, causal=True))
    eot = jnp.argmax(ids, axis=-1)
    pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
    return self.proj(pooled)
