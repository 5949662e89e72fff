"""Transformer building blocks shared by the image and text towers (pre-LN, CLIP-style).

Every parameter carries logical axis names (see ``vlpt.sharding``): attention weights are laid out
``[embed, heads, head_dim]`` so tensor parallelism splits heads without reshapes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.partitioning import annotated, constrain, param

Dtype = jnp.dtype

_dense_init = nnx.initializers.normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()


def quick_gelu(x: jax.Array) -> jax.Array:
  """The sigmoid approximation OpenAI's CLIP was trained with: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as torch's default
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class LayerNorm(nnx.Module):
  """LayerNorm with torch's eps (1e-5) by default, statistics in fp32 whatever the compute dtype."""

  def __init__(self, dim: int, *, eps: float = 1e-5, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32):
    self.scale = annotated(jnp.ones((dim,), param_dtype), "norm")
    self.bias = annotated(jnp.zeros((dim,), param_dtype), "norm")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class Dense(nnx.Module):
  """y = x @ W + b with logical axes on W: (in_axis, out_axis)."""

  def __init__(self, din: int, dout: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
               use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               kernel_init=_dense_init):
    self.kernel = nnx.Param(param(kernel_init, *axes)(rngs.params(), (din, dout), param_dtype))
    self.bias = (nnx.Param(param(_zeros, axes[1])(rngs.params(), (dout,), param_dtype))
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Attention(nnx.Module):
  """Multi-head self-attention with q/k/v laid out [embed, heads, head_dim]."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32):
    if width % heads:
      raise ValueError(f"attention width {width} is not divisible by {heads} heads")
    head_dim = width // heads
    init = param(_dense_init, "embed", "heads", "kv")
    binit = param(_zeros, "heads", "kv")
    for name in ("query", "key", "value"):
      setattr(self, name, nnx.Param(init(rngs.params(), (width, heads, head_dim), param_dtype)))
      setattr(self, f"{name}_bias", nnx.Param(binit(rngs.params(), (heads, head_dim), param_dtype)))
    self.out = nnx.Param(param(_dense_init, "heads", "kv", "embed")(
        rngs.params(), (heads, head_dim, width), param_dtype))
    self.out_bias = nnx.Param(param(_zeros, "embed")(rngs.params(), (width,), param_dtype))
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, causal: bool = False, mask: jax.Array | None = None
               ) -> jax.Array:
    dt = self.dtype
    x = x.astype(dt)

    def project(w, b):
      y = jnp.einsum("bld,dhk->blhk", x, w[...].astype(dt)) + b[...].astype(dt)
      return constrain(y, "activation_batch", "activation_length", "activation_heads",
                       "activation_kv")

    q = project(self.query, self.query_bias)
    k = project(self.key, self.key_bias)
    v = project(self.value, self.value_bias)
    # jax.nn.dot_product_attention picks cuDNN flash attention on GPU when asked; the XLA path
    # computes the softmax in fp32.
    y = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    y = jnp.einsum("blhk,hkd->bld", y, self.out[...].astype(dt)) + self.out_bias[...].astype(dt)
    return constrain(y, "activation_batch", "activation_length", "activation_embed")


class Mlp(nnx.Module):
  def __init__(self, width: int, hidden: int, *, act: str, rngs: nnx.Rngs,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
    self.fc1 = Dense(width, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype,
                     param_dtype=param_dtype)
    self.fc2 = Dense(hidden, width, ("mlp", "embed"), rngs=rngs, dtype=dtype,
                     param_dtype=param_dtype)
    self.act = activation(act)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.act(self.fc1(x))
    h = constrain(h, "activation_batch", "activation_length", "activation_mlp")
    return self.fc2(h)


class Block(nnx.Module):
  """Pre-LN residual block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, act: str, rngs: nnx.Rngs,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.ln_1 = LayerNorm(width, **kw)
    self.attn = Attention(width, heads, rngs=rngs, **kw)
    self.ln_2 = LayerNorm(width, **kw)
    self.mlp = Mlp(width, mlp_dim, act=act, rngs=rngs, **kw)

  def __call__(self, x: jax.Array, *, causal: bool = False, mask: jax.Array | None = None
               ) -> jax.Array:
    x = x + self.attn(self.ln_1(x), causal=causal, mask=mask)
    x = x + self.mlp(self.ln_2(x))
    return constrain(x, "activation_batch", "activation_length", "activation_embed")


class Transformer(nnx.Module):
  """A stack of pre-LN blocks."""

  def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, *, act: str,
               rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
    self.blocks = nnx.List([
        Block(width, heads, mlp_dim, act=act, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        for _ in range(depth)
    ])

  def __call__(self, x: jax.Array, *, causal: bool = False, mask: jax.Array | None = None
               ) -> jax.Array:
    for block in self.blocks:
      x = block(x, causal=causal, mask=mask)
    return x
