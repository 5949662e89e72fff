"""LocCa: a location-aware captioning decoder on the image tower's patch tokens (Wan et al. 2024,
arXiv:2403.19596), as SigLIP 2 adds it to SigLIP (Tschannen et al. 2025, arXiv:2502.14786, Sec. 2.2:
the decoder cross-attends to the un-pooled vision encoder output; it is used in pre-training only).

The model is CLIP's two towers (SigLIP's layout in the recipes: MAP-pooled ViT, sigmoid loss) plus
:class:`LocCaDecoder`. Everything the decoder reads and writes is one token sequence in its own
vocabulary, the text tokenizer's ids followed by reserved ids (so any tokenizer works):

=====================  =======================================================================
``0 .. V-1``           the text tokenizer's ids (``V``: its vocabulary)
``V .. V+num_bins-1``  box coordinates: a normalized coordinate ``c`` is bin ``floor(c * num_bins)``
                       (clipped), read back as the bin's centre ``(bin + 0.5) / num_bins``
then 5 specials        ``cap``, ``aref``, ``gcap`` (task prefixes), ``mask`` (the input of parallel
                       prediction), ``eos`` (the end of every target)
then unused ids        up to a multiple of 128 (so tensor parallelism divides the vocabulary)
=====================  =======================================================================

A box is 4 tokens ``y0 x0 y1 x1`` (the data's order). The three LocCa tasks (Wan et al. 2024,
Sec. 3.2) as sequences, the predicted part (the only one the loss reads) in brackets:

* captioning: ``cap [words eos]``;
* automatic referring expression (ARef): ``aref phrase [y0 x0 y1 x1 eos]``;
* grounded captioning (GCap): ``gcap y0 x0 y1 x1 [phrase eos]``.

Parallel prediction (CapPa, Tschannen et al. 2023, arXiv:2306.07915, Sec. 3.1; used by LocCa and
SigLIP 2 for a fraction of the examples): the inputs of the predicted part become ``mask`` tokens
and the self-attention is not causal, so all tokens are predicted at once from the image and the
given prefix.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpt.models.clip import CLIP, dtype_of, l2_normalize
from vlpt.models.layers import BlockOptions, Dense, LayerNorm, Transformer
from vlpt.models.partitioning import constrain, param
from vlpt.models.sizes import parse_text, parse_vit, tower_size

SPECIALS = ("cap", "aref", "gcap", "mask", "eos")
TASKS = ("caption", "aref", "gcap")
# positions beyond the text length: a task token, a box (4), and an end token in the worst case
EXTRA_POSITIONS = 6
VOCAB_MULTIPLE = 128


class LocCaDecoder(nnx.Module):
  """Decoder token ids [B, L] + image patch tokens [B, N, W] -> logits [B, L, V + num_bins + 5].

  Its own token and position embeddings; per layer a self-attention block (causal, or not for
  parallel-prediction rows) then a cross-attention block over the patch tokens (vlpt's
  ``Transformer(decoder=True)``, as CoCa's decoder).
  """

  def __init__(
    self,
    *,
    vocab_size: int,
    context_length: int,
    rngs: nnx.Rngs,
    num_bins: int = 500,
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    mlp_dim: int | None = None,
    variant: str = "B",
    act: str = "gelu",
    norm_eps: float = 1e-5,
    layer_scale: float | None = None,
    remat: str = "none",
    attention: str = "xla",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    if num_bins < 2:
      raise ValueError(f"config.model.decoder.num_bins must be at least 2, got {num_bins}")
    size = tower_size(parse_text(variant), width=width, depth=depth, heads=heads, mlp_dim=mlp_dim)
    w = size.width
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    opts = BlockOptions(act=act, norm_eps=norm_eps, layer_scale=layer_scale, attention=attention, **kw)
    self.text_vocab, self.num_bins, self.width, self.dtype = vocab_size, num_bins, w, dtype
    first = vocab_size + num_bins
    self.cap_id, self.aref_id, self.gcap_id, self.mask_id, self.eos_id = range(first, first + 5)
    # padded to a multiple of VOCAB_MULTIPLE so the "vocab" axis divides over tensor parallelism
    # (the padding ids are never targets; generated ones read as text padding)
    self.vocab_size = -(-(first + len(SPECIALS)) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    # inputs are one shorter than the longest sequence (text + EXTRA_POSITIONS)
    self.context_length = context_length + EXTRA_POSITIONS - 1
    self.token_embedding = nnx.Param(
      param(nnx.initializers.normal(0.02), "vocab", "embed")(
        rngs.params(), (self.vocab_size, w), param_dtype
      )
    )
    self.positional_embedding = nnx.Param(
      param(nnx.initializers.normal(0.01), "length", "embed")(
        rngs.params(), (self.context_length, w), param_dtype
      )
    )
    self.transformer = Transformer(
      w, size.depth, size.heads, size.mlp_dim, opts=opts, rngs=rngs, remat=remat, decoder=True
    )
    self.ln_final = LayerNorm(w, eps=norm_eps, **kw)
    self.head = Dense(
      w,
      self.vocab_size,
      ("embed", "vocab"),
      rngs=rngs,
      use_bias=False,
      kernel_init=nnx.initializers.normal(stddev=w**-0.5),
      **kw,
    )

  def _embed(self, tokens: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    dt = self.dtype
    x = jnp.take(self.token_embedding[...], tokens, axis=0).astype(dt)
    pos = jax.lax.dynamic_slice_in_dim(self.positional_embedding[...], start, tokens.shape[1], axis=0)
    return constrain(x + pos.astype(dt), "activation_batch", "activation_length", "activation_embed")

  def __call__(
    self, tokens: jax.Array, image_tokens: jax.Array, *, parallel: jax.Array | None = None
  ) -> jax.Array:
    """Teacher forcing; ``parallel`` [B] bool: rows whose self-attention is not causal."""
    return self.logits(self.hidden(tokens, image_tokens, parallel=parallel))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """The output head on final states [..., W] -> float32 logits [..., V']."""
    return self.head(hidden).astype(jnp.float32)

  def hidden(
    self, tokens: jax.Array, image_tokens: jax.Array, *, parallel: jax.Array | None = None
  ) -> jax.Array:
    """The final (normalized) states [B, L, W] under teacher forcing, before the output head."""
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(f"decoder input length {length} exceeds its context {self.context_length}")
    x = self._embed(tokens)
    if parallel is None:
      x = self.transformer(x, causal=True, context=image_tokens)
    else:
      causal = jnp.tril(jnp.ones((length, length), bool))
      mask = causal[None, None] | parallel[:, None, None, None]
      x = self.transformer(x, mask=mask, context=image_tokens)
    return self.ln_final(x)

  def decode_step(self, tokens: jax.Array, position: jax.Array, image_tokens: jax.Array) -> jax.Array:
    """Next-token logits [B, V'] after appending ``tokens`` [B, 1] at ``position`` (KV cache)."""
    x = self.transformer(self._embed(tokens, position), context=image_tokens, decode=True)
    return self.logits(self.ln_final(x))[:, -1]


def _image_width(image: dict) -> int:
  size, _ = parse_vit(image.get("variant", "B/16"))
  return tower_size(size, width=image.get("width")).width


class LocCa(CLIP):
  """CLIP's towers (SigLIP's layout in the recipes) plus a LocCa decoder on the patch tokens."""

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
    if image.get("pool", "token") == "coca" or image.get("naflex"):
      raise ValueError(
        "LocCa's decoder reads the image tower's patch tokens: use pool 'map', 'gap' or 'token' "
        "and no naflex in config.model.image"
      )
    width = _image_width(image)
    decoder = {"width": width, "act": image.get("act", "gelu"), **decoder}
    if decoder["width"] != width:
      raise ValueError(
        f"config.model.decoder.width={decoder['width']} must equal the image tower's width "
        f"({width}): the decoder cross-attends to its patch tokens"
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
    self.decoder = LocCaDecoder(
      **decoder,
      rngs=rngs,
      attention=attention,
      dtype=dtype_of(dtype),
      param_dtype=dtype_of(param_dtype),
    )
    self.pad_id = text.get("pad_id", 0)
    # what caption generation starts and stops with (vlpt.models.generation; the eval suite)
    self.caption_start, self.caption_end = self.decoder.cap_id, self.decoder.eos_id

  def image_features(
    self, images: jax.Array, *, dropout_rng: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """(normalized contrastive embedding, the patch tokens before pooling: the decoder's input)."""
    pooled, tokens = self.image.features(images, dropout_rng=dropout_rng)
    return l2_normalize(pooled), tokens

  def text_ids(self, ids: jax.Array) -> jax.Array:
    """Generated decoder ids as text-tokenizer ids: the reserved ids become padding."""
    return jnp.where(ids >= self.decoder.text_vocab, self.pad_id, ids)

  # ---- incremental decoding (vlpt.models.generation) -----------------------------------------
  def init_cache(self, batch: int, length: int) -> None:
    if length > self.decoder.context_length:
      raise ValueError(
        f"cannot decode {length} tokens: the decoder context is {self.decoder.context_length}"
      )
    self.decoder.transformer.init_cache(batch, length)

  def decode_step(self, tokens: jax.Array, position: jax.Array, image_tokens: jax.Array) -> jax.Array:
    return self.decoder.decode_step(tokens, position, image_tokens)


# ---- boxes as tokens, and the task sequences ----------------------------------------------------


def boxes_to_tokens(boxes: jax.Array, *, text_vocab: int, num_bins: int) -> jax.Array:
  """Normalized boxes [..., 4] -> coordinate token ids [..., 4] (``text_vocab + bin``)."""
  bins = jnp.clip(jnp.floor(boxes * num_bins), 0, num_bins - 1).astype(jnp.int32)
  return text_vocab + bins


def tokens_to_boxes(tokens: jax.Array, *, text_vocab: int, num_bins: int) -> jax.Array:
  """Coordinate token ids [..., 4] -> normalized boxes [..., 4] (each bin's centre)."""
  bins = jnp.clip(tokens - text_vocab, 0, num_bins - 1)
  return (bins.astype(jnp.float32) + 0.5) / num_bins


def words(rows: jax.Array, drop: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Tokenized texts [B, L] -> (their tokens other than ``drop`` (padding, start, end) moved to the
  front, in order [B, L]; how many there are [B])."""
  keep = ~jnp.isin(rows, jnp.asarray(drop, rows.dtype))
  order = jnp.argsort(~keep, axis=-1, stable=True)
  return jnp.take_along_axis(rows, order, axis=-1), keep.sum(-1).astype(jnp.int32)


def _assemble(parts, length: int, pad: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ragged parts ``(tokens [B, Lp], count [B], predicted)`` laid end to end -> (ids [B, length],
  predicted [B, length], given [B, length]: the prefix), padded with ``pad``."""
  batch = parts[0][0].shape[0]
  pos = jnp.arange(length)[None]
  out = jnp.full((batch, length), pad, jnp.int32)
  predicted = jnp.zeros((batch, length), bool)
  given = jnp.zeros((batch, length), bool)
  offset = jnp.zeros((batch,), jnp.int32)
  for tokens, count, is_predicted in parts:
    idx = pos - offset[:, None]
    inside = (idx >= 0) & (idx < count[:, None])
    got = jnp.take_along_axis(tokens, jnp.clip(idx, 0, tokens.shape[1] - 1), axis=1)
    out = jnp.where(inside, got, out)
    if is_predicted:
      predicted = predicted | inside
    else:
      given = given | inside
    offset = offset + count
  return out, predicted, given


def task_sequences(
  decoder: LocCaDecoder,
  text: jax.Array,
  *,
  drop: tuple[int, ...],
  pad: int,
  boxes: jax.Array | None = None,
  box_labels: jax.Array | None = None,
  box_phrases: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Every example's decoder sequences, example-major [B * S, ...] with S = 1 + 2K (a caption, then
  an ARef and a GCap for each of the K box slots; S = 1 without boxes).

  ``drop``: the text tokenizer's padding / start / end ids (removed from captions and phrases).
  Returns ``ids`` [B*S, T+1] (T = the decoder's context), ``predicted`` and ``given`` [B*S, T+1]
  (the loss's targets; the prefix kept under parallel prediction) and ``task`` [B*S] (index in
  :data:`TASKS`). Empty box slots (label -1) predict nothing.
  """
  d = decoder
  length = d.context_length + 1
  batch = text.shape[0]

  def const(value: int, n: int) -> tuple[jax.Array, jax.Array]:
    return jnp.full((n, 1), value, jnp.int32), jnp.ones((n,), jnp.int32)

  cap_words, cap_n = words(text, drop)
  seqs = [
    _assemble(
      [(*const(d.cap_id, batch), False), (cap_words, cap_n, True), (*const(d.eos_id, batch), True)],
      length,
      pad,
    )
  ]
  tasks = [0]
  if boxes is not None:
    k = boxes.shape[1]
    n = batch * k
    phrase, phrase_n = words(box_phrases.reshape(n, -1), drop)
    box = boxes_to_tokens(boxes.reshape(n, 4), text_vocab=d.text_vocab, num_bins=d.num_bins)
    four = jnp.full((n,), 4, jnp.int32)
    valid = (box_labels.reshape(n) >= 0)[:, None]
    aref = [(*const(d.aref_id, n), False), (phrase, phrase_n, False), (box, four, True)]
    gcap = [(*const(d.gcap_id, n), False), (box, four, False), (phrase, phrase_n, True)]
    for task, parts in ((1, aref), (2, gcap)):
      ids, predicted, given = _assemble([*parts, (*const(d.eos_id, n), True)], length, pad)
      seqs.append(tuple(x.reshape(batch, k, length) for x in (ids, predicted & valid, given)))
      tasks += [task] * k
  ids, predicted, given = (
    jnp.concatenate([s[i].reshape(batch, -1, length) for s in seqs], axis=1).reshape(-1, length)
    for i in range(3)
  )
  task = jnp.tile(jnp.asarray(tasks, jnp.int32), batch)
  return {"ids": ids, "predicted": predicted, "given": given, "task": task}


def parallel_rows(n: int, fraction: float) -> np.ndarray:
  """Which of ``n`` rows use parallel prediction: ``round(n * fraction)`` rows spread evenly (row
  i when ``floor((i + 1) f) > floor(i f)``). The data order is random, so these are a random subset
  of the examples, with no random key in the step."""
  i = np.arange(n)
  return np.floor((i + 1) * fraction + 1e-9) > np.floor(i * fraction + 1e-9)


def decoder_inputs(
  decoder: LocCaDecoder, seqs: dict[str, jax.Array], parallel: np.ndarray | jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Teacher forcing: (inputs [R, T], labels [R, T], loss mask [R, T]); a parallel row's inputs
  are its given prefix and ``mask`` tokens everywhere else."""
  ids = seqs["ids"]
  inputs = ids[:, :-1]
  masked = jnp.where(seqs["given"][:, :-1], inputs, decoder.mask_id)
  inputs = jnp.where(jnp.asarray(parallel)[:, None], masked, inputs)
  return inputs, ids[:, 1:], seqs["predicted"][:, 1:]
