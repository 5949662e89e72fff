"""Transformer building blocks shared by every tower (pre-LN, CLIP-style).

Every parameter carries logical axis names (see ``vlpt.sharding``): attention weights are laid out
``[embed, heads, head_dim]`` so tensor parallelism splits heads without reshapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
  "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # SigLIP (big_vision, HF)
  "quick_gelu": quick_gelu,
  "relu": jax.nn.relu,
}

# Rematerialization policies for scanned or looped blocks (``config.model.*.remat``): what the
# backward pass may keep instead of recomputing. "full" keeps nothing (least memory).
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_saveable,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


# config.model.attention -> jax.nn.dot_product_attention's ``implementation``: "xla" (any backend,
# softmax in fp32), "cudnn" (cuDNN's fused flash attention; GPU only, fp16/bf16), "auto" (JAX picks:
# cuDNN where it applies, XLA elsewhere)
ATTENTION_IMPLEMENTATIONS = {"xla": "xla", "cudnn": "cudnn", "auto": None}


def check_attention(name: str) -> None:
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
      f"config.model.attention={name!r}: choose one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
    )


@dataclasses.dataclass(frozen=True)
class BlockOptions:
  """What varies between the transformer blocks of the model families vlpt imports."""

  act: str = "gelu"
  norm_eps: float = 1e-5  # torch/open_clip/HF CLIP; SigLIP uses 1e-6
  layer_scale: float | None = None  # LayerScale init (Touvron et al. 2021, CaiT Sec. 2.1)
  attention: str = "xla"  # config.model.attention (ATTENTION_IMPLEMENTATIONS)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def kw(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with torch's eps (1e-5) by default, statistics in fp32 whatever the compute dtype."""

  def __init__(
    self, dim: int, *, eps: float = 1e-5, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
  ):
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

  def __init__(
    self,
    din: int,
    dout: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init=_dense_init,
  ):
    self.kernel = nnx.Param(param(kernel_init, *axes)(rngs.params(), (din, dout), param_dtype))
    self.bias = (
      nnx.Param(param(_zeros, axes[1])(rngs.params(), (dout,), param_dtype)) if use_bias else None
    )
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerScale(nnx.Module):
  """Per-channel residual-branch scale (CaiT, Touvron et al. 2021, Sec. 2.1)."""

  def __init__(self, dim: int, init: float, *, param_dtype: Dtype = jnp.float32, **_):
    self.gamma = annotated(jnp.full((dim,), init, param_dtype), "norm")

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.gamma[...].astype(x.dtype)


class KVCache(nnx.Variable):
  """Decoding state of one self-attention layer (keys, values, and how many are filled)."""


class Attention(nnx.Module):
  """Multi-head attention with q/k/v laid out [embed, heads, head_dim].

  Self-attention by default; ``kv`` (with ``kv_dim`` at construction) makes it cross-attention.
  ``init_cache`` + ``decode=True`` run it one token at a time for autoregressive generation.
  """

  def __init__(
    self,
    dim: int,
    heads: int,
    *,
    rngs: nnx.Rngs,
    kv_dim: int | None = None,
    attention: str = "xla",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
  ):
    check_attention(attention)
    if dim % heads:
      raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
    head_dim = dim // heads
    kv_dim = kv_dim or dim
    init = param(_dense_init, "embed", "heads", "kv")
    binit = param(_zeros, "heads", "kv")
    for name, din in (("query", dim), ("key", kv_dim), ("value", kv_dim)):
      setattr(self, name, nnx.Param(init(rngs.params(), (din, heads, head_dim), param_dtype)))
      setattr(self, f"{name}_bias", nnx.Param(binit(rngs.params(), (heads, head_dim), param_dtype)))
    self.out = nnx.Param(
      param(_dense_init, "heads", "kv", "embed")(rngs.params(), (heads, head_dim, dim), param_dtype)
    )
    self.out_bias = nnx.Param(param(_zeros, "embed")(rngs.params(), (dim,), param_dtype))
    self.dtype = dtype
    self.implementation = ATTENTION_IMPLEMENTATIONS[attention]
    self.heads, self.head_dim = heads, head_dim
    self.cache: KVCache | None = nnx.data(None)

  def init_cache(self, batch: int, length: int) -> None:
    """Allocates an empty key/value cache for ``length`` decoding positions."""
    shape = (batch, length, self.heads, self.head_dim)
    self.cache = KVCache(
      {
        "key": jnp.zeros(shape, self.dtype),
        "value": jnp.zeros(shape, self.dtype),
        "index": jnp.zeros((), jnp.int32),
      }
    )

  def _project(self, x, w, b):
    y = jnp.einsum("bld,dhk->blhk", x.astype(self.dtype), w[...].astype(self.dtype))
    y = y + b[...].astype(self.dtype)
    return constrain(y, "activation_batch", "activation_length", "activation_heads", "activation_kv")

  def __call__(
    self,
    x: jax.Array,
    *,
    kv: jax.Array | None = None,
    causal: bool = False,
    mask: jax.Array | None = None,
    decode: bool = False,
  ) -> jax.Array:
    src = x if kv is None else kv
    q = self._project(x, self.query, self.query_bias)
    k = self._project(src, self.key, self.key_bias)
    v = self._project(src, self.value, self.value_bias)
    if decode:
      if self.cache is None:
        raise ValueError("decode=True needs init_cache() first")
      c = self.cache.get_value()
      idx = c["index"]
      keys = jax.lax.dynamic_update_slice_in_dim(c["key"], k, idx, axis=1)
      values = jax.lax.dynamic_update_slice_in_dim(c["value"], v, idx, axis=1)
      self.cache.set_value({"key": keys, "value": values, "index": idx + q.shape[1]})
      # query position idx + i sees cached positions <= idx + i
      qpos = idx + jnp.arange(q.shape[1])
      visible = jnp.arange(keys.shape[1])[None, :] <= qpos[:, None]
      mask = visible[None, None] if mask is None else mask & visible[None, None]
      k, v, causal = keys, values, False
    # the implementation config.model.attention asks for (cuDNN's fused kernel, XLA's softmax in
    # fp32, or JAX's choice)
    y = jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=causal, implementation=self.implementation
    )
    dt = self.dtype
    y = jnp.einsum("blhk,hkd->bld", y, self.out[...].astype(dt)) + self.out_bias[...].astype(dt)
    return constrain(y, "activation_batch", "activation_length", "activation_embed")


class Mlp(nnx.Module):
  def __init__(
    self,
    width: int,
    hidden: int,
    *,
    act: str,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
  ):
    self.fc1 = Dense(width, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.fc2 = Dense(hidden, width, ("mlp", "embed"), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.act = activation(act)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.act(self.fc1(x))
    h = constrain(h, "activation_batch", "activation_length", "activation_mlp")
    return self.fc2(h)


class Block(nnx.Module):
  """Pre-LN residual block: x + ls_1(attn(ln_1(x))); x + ls_2(mlp(ln_2(x))).

  With ``cross_attention`` the attention reads keys/values from a context (its own LayerNorm,
  ``ln_1_kv``), as the cross-attention blocks of CoCa's multimodal decoder (open_clip layout).
  """

  def __init__(
    self,
    width: int,
    heads: int,
    mlp_dim: int,
    *,
    opts: BlockOptions,
    rngs: nnx.Rngs,
    cross_attention: bool = False,
  ):
    kw = opts.kw
    eps = opts.norm_eps
    self.ln_1 = LayerNorm(width, eps=eps, **kw)
    self.ln_1_kv = LayerNorm(width, eps=eps, **kw) if cross_attention else None
    self.attn = Attention(width, heads, rngs=rngs, attention=opts.attention, **kw)
    self.ls_1 = LayerScale(width, opts.layer_scale, **kw) if opts.layer_scale else None
    self.ln_2 = LayerNorm(width, eps=eps, **kw)
    self.mlp = Mlp(width, mlp_dim, act=opts.act, rngs=rngs, **kw)
    self.ls_2 = LayerScale(width, opts.layer_scale, **kw) if opts.layer_scale else None

  def __call__(
    self,
    x: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    context: jax.Array | None = None,
    decode: bool = False,
  ) -> jax.Array:
    if self.ln_1_kv is not None:
      h = self.attn(self.ln_1(x), kv=self.ln_1_kv(context))
    else:
      h = self.attn(self.ln_1(x), causal=causal, mask=mask, decode=decode)
    x = x + (self.ls_1(h) if self.ls_1 is not None else h)
    h = self.mlp(self.ln_2(x))
    x = x + (self.ls_2(h) if self.ls_2 is not None else h)
    return constrain(x, "activation_batch", "activation_length", "activation_embed")


class DecoderLayer(nnx.Module):
  """A causal self-attention block followed by a cross-attention block (CoCa's decoder layer)."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, opts: BlockOptions, rngs: nnx.Rngs):
    self.self_block = Block(width, heads, mlp_dim, opts=opts, rngs=rngs)
    self.cross_block = Block(width, heads, mlp_dim, opts=opts, rngs=rngs, cross_attention=True)

  def __call__(
    self,
    x: jax.Array,
    *,
    causal: bool = True,
    mask: jax.Array | None = None,
    context: jax.Array | None = None,
    decode: bool = False,
  ) -> jax.Array:
    x = self.self_block(x, causal=causal, mask=mask, decode=decode)
    return self.cross_block(x, context=context)


class Transformer(nnx.Module):
  """A stack of blocks (or of CoCa decoder layers), as a Python loop or one ``scan``.

  Scanning (``scan=True``) traces and compiles one block whatever the depth, which is what makes
  ViT-L/H/g compile in seconds; parameters then carry a leading "layers" axis. ``remat`` names a
  rematerialization policy from :data:`REMAT_POLICIES`, applied per block in both modes.
  """

  def __init__(
    self,
    width: int,
    depth: int,
    heads: int,
    mlp_dim: int,
    *,
    opts: BlockOptions,
    rngs: nnx.Rngs,
    scan: bool = False,
    remat: str = "none",
    decoder: bool = False,
  ):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    self.scan, self.remat, self.depth = scan, remat, depth

    layer = DecoderLayer if decoder else Block

    def make(rngs):
      return layer(width, heads, mlp_dim, opts=opts, rngs=rngs)

    if scan:
      make = nnx.split_rngs(splits=depth)(
        nnx.vmap(make, in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      )
      self.blocks = make(rngs)
    else:
      self.blocks = nnx.List([make(rngs) for _ in range(depth)])

  def __call__(
    self,
    x: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    context: jax.Array | None = None,
    decode: bool = False,
  ) -> jax.Array:
    def apply(block, x):
      return block(x, causal=causal, mask=mask, context=context, decode=decode)

    policy = REMAT_POLICIES[self.remat]
    if self.remat != "none" and not decode:
      apply = nnx.remat(apply, policy=policy)
    if not self.scan:
      for block in self.blocks:
        x = apply(block, x)
      return x

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, block):
      return apply(block, x)

    return body(x, self.blocks)

  def init_cache(self, batch: int, length: int) -> None:
    if self.scan:
      raise ValueError("decoding with a KV cache needs an unscanned decoder (scan=False)")
    for block in self.blocks:
      (block.self_block if isinstance(block, DecoderLayer) else block).attn.init_cache(batch, length)
