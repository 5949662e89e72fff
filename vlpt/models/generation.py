"""Autoregressive captioning for CoCa with key/value caches: greedy, beam search, top-k / top-p.

Each function runs the whole decode under one ``jax.jit`` (a ``lax.scan`` over positions): the
model is split into parameters and caches, and every step updates the caches functionally.
Outputs are id rows ``[B, max_len]`` starting with SOT; after EOT everything is ``pad_id``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.models.layers import KVCache


def _decoder_fns(model, batch: int, length: int):
  model.init_cache(batch, length)
  graphdef, params, cache = nnx.split(model, nnx.Param, KVCache)

  def step(cache, tokens, position, image_tokens):
    m = nnx.merge(graphdef, params, cache)
    logits = m.decode_step(tokens, position, image_tokens)
    return nnx.state(m, KVCache), logits

  return graphdef, params, cache, step


def _finish(ids: jax.Array, eot_id: int, pad_id: int) -> jax.Array:
  """Pads every position after the first EOT."""
  is_eot = ids == eot_id
  after = jnp.cumsum(is_eot, axis=1) - is_eot > 0
  return jnp.where(after, pad_id, ids)


def _filter_logits(logits: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
  """Top-k then nucleus (top-p, Holtzman et al. 2020) filtering; removed entries get -inf."""
  neg = jnp.finfo(logits.dtype).min
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p is not None and top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always the most likely token)
    keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
  return logits


def generate(
  model,
  images: jax.Array,
  *,
  max_len: int,
  sot_id: int,
  eot_id: int,
  pad_id: int = 0,
  method: str = "greedy",
  num_beams: int = 4,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  length_penalty: float = 1.0,
  rng: jax.Array | None = None,
) -> jax.Array:
  """Captions for ``images`` [B, H, W, 3] (preprocessed): ids [B, max_len].

  ``method``: "greedy", "beam" (``num_beams``, scores normalized by length**length_penalty) or
  "sample" (``temperature``, optional ``top_k`` / ``top_p``, needs ``rng``).
  """
  if method not in ("greedy", "beam", "sample"):
    raise ValueError(f"unknown generation method {method!r}; choose greedy, beam or sample")
  if method == "sample" and rng is None:
    raise ValueError("sampling needs rng=jax.random.key(...)")
  _, image_tokens = model.image_features(images)
  if method == "beam":
    return _beam(
      model,
      image_tokens,
      max_len=max_len,
      sot_id=sot_id,
      eot_id=eot_id,
      pad_id=pad_id,
      num_beams=num_beams,
      length_penalty=length_penalty,
    )
  return _sample_or_greedy(
    model,
    image_tokens,
    max_len=max_len,
    sot_id=sot_id,
    eot_id=eot_id,
    pad_id=pad_id,
    greedy=method == "greedy",
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    rng=rng if rng is not None else jax.random.key(0),
  )


def _sample_or_greedy(
  model, image_tokens, *, max_len, sot_id, eot_id, pad_id, greedy, temperature, top_k, top_p, rng
):
  batch = image_tokens.shape[0]
  _, params, cache, step = _decoder_fns(model, batch, max_len)

  @jax.jit
  def run(cache, image_tokens, rng):
    def body(carry, position):
      cache, tokens, done, rng = carry
      cache, logits = step(cache, tokens[:, None], position, image_tokens)
      if greedy:
        nxt = jnp.argmax(logits, axis=-1)
      else:
        rng, key = jax.random.split(rng)
        logits = _filter_logits(logits / temperature, top_k, top_p)
        nxt = jax.random.categorical(key, logits, axis=-1)
      nxt = jnp.where(done, pad_id, nxt).astype(jnp.int32)
      return (cache, nxt, done | (nxt == eot_id), rng), nxt

    start = jnp.full((batch,), sot_id, jnp.int32)
    init = (cache, start, jnp.zeros((batch,), bool), rng)
    _, out = jax.lax.scan(body, init, jnp.arange(max_len - 1))
    return jnp.concatenate([start[:, None], out.T], axis=1)

  return _finish(run(cache, image_tokens, rng), eot_id, pad_id)


def _beam(model, image_tokens, *, max_len, sot_id, eot_id, pad_id, num_beams, length_penalty):
  batch, k = image_tokens.shape[0], num_beams
  _, params, cache, step = _decoder_fns(model, batch * k, max_len)
  tiled = jnp.repeat(image_tokens, k, axis=0)

  def reorder(cache, index):  # index [B*k] rows to take
    return jax.tree.map(lambda c: c[index] if c.ndim > 0 else c, cache)

  @jax.jit
  def run(cache):
    neg = -1e9
    seqs = jnp.full((batch, k, max_len), pad_id, jnp.int32).at[:, :, 0].set(sot_id)
    # only the first beam is live at the start, so the k beams don't duplicate
    scores = jnp.where(jnp.arange(k)[None] == 0, 0.0, neg) * jnp.ones((batch, 1))
    done = jnp.zeros((batch, k), bool)
    lengths = jnp.ones((batch, k), jnp.int32)

    def body(carry, position):
      cache, seqs, scores, done, lengths = carry
      tokens = seqs[:, :, position].reshape(batch * k, 1)
      cache, logits = step(cache, tokens, position, tiled)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, -1)
      vocab = logp.shape[-1]
      # a finished beam extends only with padding, at no cost
      pad_only = jnp.full((vocab,), neg).at[pad_id].set(0.0)
      logp = jnp.where(done[..., None], pad_only, logp)
      total = (scores[..., None] + logp).reshape(batch, k * vocab)
      new_len = lengths[..., None] + (~done[..., None]).astype(jnp.int32)
      norm = new_len.astype(jnp.float32) ** length_penalty
      ranked = total / jnp.broadcast_to(norm, (batch, k, vocab)).reshape(batch, k * vocab)
      _, flat_idx = jax.lax.top_k(ranked, k)
      beam_idx, token = flat_idx // vocab, (flat_idx % vocab).astype(jnp.int32)
      rows = jnp.arange(batch)[:, None]
      seqs = seqs[rows, beam_idx].at[:, :, position + 1].set(token)
      scores = total[rows, flat_idx]
      was_done = done[rows, beam_idx]
      lengths = lengths[rows, beam_idx] + (~was_done).astype(jnp.int32)
      done = was_done | (token == eot_id)
      cache = reorder(cache, (rows * k + beam_idx).reshape(-1))
      return (cache, seqs, scores, done, lengths), None

    init = (cache, seqs, scores, done, lengths)
    (cache, seqs, scores, done, lengths), _ = jax.lax.scan(body, init, jnp.arange(max_len - 1))
    best = jnp.argmax(scores / lengths.astype(jnp.float32) ** length_penalty, axis=-1)
    return seqs[jnp.arange(batch), best]

  return _finish(run(cache), eot_id, pad_id)
