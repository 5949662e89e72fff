"""CoCa: contrastive captioners (Yu et al. 2022) in open_clip's layout.

- Image tower: ViT whose attentional pooler (``pool="coca"``) yields n query outputs; the first,
  projected, is the contrastive embedding, the rest are the decoder's image tokens.
- Unimodal text tower: causal, with a learned CLS token appended at the end whose output is
  the contrastive text embedding (Sec. 3.2); its other outputs feed the decoder.
- Multimodal decoder: per layer a causal self-attention block then a cross-attention block over
  the image tokens; a linear head to the vocabulary.
- Objective: ``1.0 * contrastive + 2.0 * caption`` (Eq. 3; see ``vlpt.losses.captioning``).

Generation (``vlpt.models.generation``) decodes one token at a time with key/value caches in
the text tower and the decoder.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.clip import CLIP, dtype_of, l2_normalize
from vlpt.models.layers import BlockOptions, Dense, LayerNorm, Transformer
from vlpt.models.sizes import parse_text, tower_size


class MultimodalDecoder(nnx.Module):
  """Text token features [B, L, W] + image tokens [B, N, W] -> vocabulary logits [B, L, V]."""

  def __init__(
    self,
    *,
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    mlp_dim: int | None = None,
    vocab_size: int,
    context_length: int,
    rngs: nnx.Rngs,
    variant: str = "B",
    act: str = "gelu",
    norm_eps: float = 1e-5,
    layer_scale: float | None = None,
    remat: str = "none",
    attention: str = "xla",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    size = tower_size(parse_text(variant), width=width, depth=depth, heads=heads, mlp_dim=mlp_dim)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    opts = BlockOptions(act=act, norm_eps=norm_eps, layer_scale=layer_scale, attention=attention, **kw)
    self.context_length = context_length
    self.transformer = Transformer(
      size.width, size.depth, size.heads, size.mlp_dim, opts=opts, rngs=rngs, remat=remat, decoder=True
    )
    self.ln_final = LayerNorm(size.width, eps=norm_eps, **kw)
    self.head = Dense(
      size.width,
      vocab_size,
      ("embed", "vocab"),
      rngs=rngs,
      use_bias=False,
      kernel_init=nnx.initializers.normal(stddev=size.width**-0.5),
      **kw,
    )

  def __call__(self, tokens: jax.Array, image_tokens: jax.Array, *, decode: bool = False) -> jax.Array:
    x = self.transformer(tokens, causal=not decode, context=image_tokens, decode=decode)
    return self.head(self.ln_final(x)).astype(jnp.float32)


def _width(tower: dict) -> int:
  return tower_size(parse_text(tower.get("variant", "B")), width=tower.get("width")).width


class CoCa(CLIP):
  """CLIP's two towers (with CoCa pooling and a text CLS token) plus a captioning decoder."""

  def __init__(
    self,
    *,
    image: dict,
    text: dict,
    decoder: dict,
    embed_dim: int,
    rngs: nnx.Rngs,
    init_logit_scale: float = math.log(1 / 0.07),
    max_logit_scale: float = math.log(100),
    init_logit_bias: float | None = None,
    attention: str = "xla",
    dtype: str = "float32",
    param_dtype: str = "float32",
  ):
    image = {"pool": "coca", **image}
    text = {"embed_cls": True, **text}
    if image["pool"] != "coca" or not text["embed_cls"]:
      raise ValueError("CoCa needs config.model.image.pool='coca' and text embed_cls=True")
    widths = (embed_dim, _width(text), _width(decoder))
    if len(set(widths)) != 1:
      raise ValueError(
        f"CoCa needs config.model.embed_dim, the text tower width and the decoder "
        f"width equal (open_clip's layout), got {widths}"
      )
    super().__init__(
      image=image,
      text=text,
      embed_dim=embed_dim,
      rngs=rngs,
      init_logit_scale=init_logit_scale,
      max_logit_scale=max_logit_scale,
      init_logit_bias=init_logit_bias,
      attention=attention,
      dtype=dtype,
      param_dtype=param_dtype,
    )
    self.decoder = MultimodalDecoder(
      **decoder,
      rngs=rngs,
      act=image.get("act", "gelu"),
      attention=attention,
      dtype=dtype_of(dtype),
      param_dtype=dtype_of(param_dtype),
    )
    self.pad_id = text.get("pad_id", 0)

  def image_features(
    self, images: jax.Array, *, dropout_rng: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """(normalized contrastive embedding, decoder image tokens)."""
    pooled, tokens = self.image.features(images, dropout_rng=dropout_rng)
    return l2_normalize(pooled), tokens

  def caption_logits(
    self, ids: jax.Array, image_tokens: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Teacher forcing: (normalized text embedding, logits [B, L-1, V], labels ids[:, 1:])."""
    pooled, tokens = self.text.features(ids)
    logits = self.decoder(tokens[:, :-1], image_tokens)
    return l2_normalize(pooled), logits, ids[:, 1:]

  def __call__(self, images: jax.Array, ids: jax.Array) -> dict[str, jax.Array]:
    image_emb, image_tokens = self.image_features(images)
    text_emb, logits, labels = self.caption_logits(ids, image_tokens)
    return {
      "image_emb": image_emb,
      "text_emb": text_emb,
      "logits": logits,
      "labels": labels,
      **self.logit_params(),
    }

  # ---- incremental decoding -----------------------------------------------------------------
  def init_cache(self, batch: int, length: int) -> None:
    """Empty key/value caches in the text tower and the decoder for ``length`` positions."""
    if length > self.text.context_length:
      raise ValueError(f"cannot decode {length} tokens: the text context is {self.text.context_length}")
    self.text.transformer.init_cache(batch, length)
    self.decoder.transformer.init_cache(batch, length)

  def decode_step(self, tokens: jax.Array, position: jax.Array, image_tokens: jax.Array) -> jax.Array:
    """Next-token logits [B, V] after appending ``tokens`` [B, 1] at ``position``."""
    text = self.text
    dt = text.dtype
    x = jnp.take(text.token_embedding[...], tokens, axis=0).astype(dt)
    pos = jax.lax.dynamic_slice_in_dim(text.positional_embedding[...], position, 1, axis=0)
    x = x + pos.astype(dt)
    x = text.transformer(x, decode=True)
    return self.decoder(x, image_tokens, decode=True)[:, -1]
