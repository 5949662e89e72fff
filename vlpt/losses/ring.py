"""Tiled ring contrastive losses: the global B x B logit matrix is never stored.

Inside ``shard_map`` over the batch axes (n devices, b = B/n rows each), embedding blocks travel
around a ring of devices with ``ppermute`` in *chunks* of ``tile`` rows, while each device folds
every (tile x tile) logit tile into running per-row statistics. Memory per device is one travelling
block plus a few tiles, linear in B/n, with no b x B term (Inf-CL, Cheng et al. 2024, Sec. 3).

Softmax (CLIP). Forward: text chunks travel *with their column log-sum-exp accumulators*, so one
circle of the ring gives both the row LSEs (image->text, kept locally) and the column LSEs
(text->image, arriving home with the chunk). Backward (custom VJP, tiles recomputed):
dL/dz_ij = (p_ij + q_ij) / 2B - delta_ij / B with p = softmax over rows, q = over columns. A
first circle moves text chunks (with their final column LSEs) and accumulates the local image
gradient; a second circle moves image chunks (with their row LSEs) and accumulates the local
text gradient. No gradient accumulator ever travels, so nothing but embeddings and per-row
scalars crosses the interconnect.

Sigmoid (SigLIP, Zhai et al. 2023, Eq. 1): the same two circles, every pair scored as a negative
in the ring and the local diagonal corrected (log sigmoid(z) - log sigmoid(-z) = z).

The returned loss is this device's share; the caller ``psum``s it to the global loss.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

AxisNames = Sequence[str]
_HI = jax.lax.Precision.HIGHEST

# The tiles' matmul precision (config.loss.precision): "bf16" multiplies bf16 embedding chunks
# with f32 accumulation (the MXU's native rate on TPU; the chunks that travel are half the bytes),
# "highest" multiplies f32 at full precision (exact to f32; several passes per matmul on TPU).
# Log-sum-exps, accumulators and gradients are f32 in both. Tolerances: docs/losses.md.
PRECISIONS = ("bf16", "highest")


def check_precision(precision: str) -> None:
  if precision not in PRECISIONS:
    raise ValueError(f"config.loss.precision={precision!r}: choose one of {PRECISIONS}")


def _dot(a, b, precision: str):
  if precision == "bf16":
    return jnp.dot(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
  return jnp.dot(a, b, precision=_HI, preferred_element_type=jnp.float32)


def _check_tiles(b: int, tile: int) -> None:
  if tile <= 0 or b % tile:
    raise ValueError(
      f"loss tile size {tile} must divide the per-device batch {b}; choose a "
      f"divisor of {b} (config.loss.tile_size)"
    )


def _ring(axes: AxisNames, n: int):
  perm = [(i, (i + 1) % n) for i in range(n)]
  return lambda x: jax.lax.ppermute(x, tuple(axes), perm)


def _varying(tree, axes: AxisNames):
  """Marks loop-carry initial values as device-varying (shard_map's type rule for loops)."""

  def cast(x):
    missing = tuple(a for a in axes if a not in jax.typeof(x).manual_axis_type.varying)
    return jax.lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree)


def _circle(block, aux, carry, body, *, axes: AxisNames, n: int, tile: int):
  """Moves every chunk of ``block`` (with its per-row ``aux``) once around the ring.

  Chunk-major order: chunk ``c`` of every device's block makes a full circle (n hops) before
  chunk ``c + 1`` starts, so a device holds one travelling chunk at a time (never a copy of a
  block) and each chunk arrives exactly when the neighbour has finished with it.
  ``body(chunk, aux_chunk, origin, offset, carry) -> (aux_chunk, carry)`` sees every chunk of
  every device exactly once; ``origin`` is the device it came from, ``offset`` its row offset in
  that device's block. Returns ``aux`` as updated by the whole ring (back home) and the carry.
  """
  shift = _ring(axes, n)
  me = jax.lax.axis_index(tuple(axes))

  def one_chunk(c, state):
    aux_home, carry = state
    start = c * tile
    travelling = (
      jax.lax.dynamic_slice_in_dim(block, start, tile),
      jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, tile), aux_home),
    )

    def hop(r, state):
      (chunk, aux_chunk), carry = state
      # the chunk's transfer to the next device is issued before this hop's tiles are computed,
      # so the interconnect works while the MXU does (the per-row aux follows the compute)
      incoming = shift(chunk)
      aux_chunk, carry = body(chunk, aux_chunk, (me - r) % n, start, carry)
      return (incoming, jax.tree.map(shift, aux_chunk)), carry

    (_, aux_chunk), carry = jax.lax.fori_loop(0, n, hop, _varying((travelling, carry), axes))
    aux_home = jax.tree.map(
      lambda a, u: jax.lax.dynamic_update_slice_in_dim(a, u, start, 0), aux_home, aux_chunk
    )
    return aux_home, carry

  return jax.lax.fori_loop(0, block.shape[0] // tile, one_chunk, _varying((aux, carry), axes))


def _row_tiles(local, body, carry, tile: int, axes: AxisNames):
  """``body(rows, start, carry) -> carry`` over the local rows, ``tile`` at a time."""

  def step(k, carry):
    start = k * tile
    return body(jax.lax.dynamic_slice_in_dim(local, start, tile), start, carry)

  return jax.lax.fori_loop(0, local.shape[0] // tile, step, _varying(carry, axes))


# ---------------------------------------------------------------------------------------------
# Softmax


def _update_rows(acc, start, fn, update):
  old = jax.lax.dynamic_slice_in_dim(acc, start, update.shape[0])
  return jax.lax.dynamic_update_slice_in_dim(acc, fn(old, update), start, 0)


def _softmax_forward(img, txt, scale, axes, n, tile, precision):
  """Row/column log-sum-exps and maxima of the global logits, in one circle."""
  b = img.shape[0]
  neg_inf = jnp.full((b,), -jnp.inf, jnp.float32)
  me = jax.lax.axis_index(tuple(axes))

  def body(chunk, col, origin, offset, rows_state):
    def tile_fn(rows, start, state):
      (row_lse, row_max), (col_lse, col_max) = state
      z = scale * _dot(rows, chunk.T, precision)
      row_lse = _update_rows(row_lse, start, jnp.logaddexp, jax.nn.logsumexp(z, axis=1))
      neg = _negatives(z, origin, me, start, offset)
      row_max = _update_rows(row_max, start, jnp.maximum, neg.max(axis=1))
      col = (jnp.logaddexp(col_lse, jax.nn.logsumexp(z, axis=0)), jnp.maximum(col_max, neg.max(axis=0)))
      return (row_lse, row_max), col

    rows_state, col = _row_tiles(img, tile_fn, (rows_state, col), tile, axes)
    return col, rows_state

  col, rows = _circle(txt, (neg_inf, neg_inf), (neg_inf, neg_inf), body, axes=axes, n=n, tile=tile)
  return rows, col


def _hits(pos, row_max, col_max):
  """In-batch retrieval hits: the positive beats every negative of its row (column)."""
  return jnp.stack([jnp.sum(pos > row_max), jnp.sum(pos > col_max)]).astype(jnp.float32)


def _negatives(z, origin, me, row_start, col_start):
  """``z`` with the positive pairs (the global diagonal) masked out, for the maxima."""
  rows = row_start + jnp.arange(z.shape[0])[:, None]
  cols = col_start + jnp.arange(z.shape[1])[None, :]
  return jnp.where((origin == me) & (rows == cols), -jnp.inf, z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _softmax_local(img, txt, scale, axes, n, tile, total, precision):
  return _softmax_fwd(img, txt, scale, axes, n, tile, total, precision)[0]


def _softmax_fwd(img, txt, scale, axes, n, tile, total, precision):
  (row_lse, row_max), (col_lse, col_max) = _softmax_forward(img, txt, scale, axes, n, tile, precision)
  pos = scale * _rowdot(img, txt)
  local = (row_lse.sum() + col_lse.sum() - 2 * pos.sum()) / (2 * total)
  return (local, _hits(pos, row_max, col_max)), (img, txt, scale, row_lse, col_lse)


def _softmax_bwd(axes, n, tile, total, precision, res, cts):
  img, txt, scale, row_lse, col_lse = res
  ct = cts[0]  # the hit counts are not differentiable
  w = ct / (2 * total)

  def image_grads(chunk, chunk_col_lse, origin, offset, carry):
    def tile_fn(rows, start, carry):
      d_img, d_scale = carry
      dots = _dot(rows, chunk.T, precision)
      z = scale * dots
      r = jax.lax.dynamic_slice_in_dim(row_lse, start, tile)
      g = w * (jnp.exp(z - r[:, None]) + jnp.exp(z - chunk_col_lse[None, :]))
      d_img = _update_rows(d_img, start, jnp.add, scale * _dot(g, chunk, precision))
      return d_img, d_scale + jnp.sum(g * dots)

    return chunk_col_lse, _row_tiles(img, tile_fn, carry, tile, axes)

  _, (d_img, d_scale) = _circle(
    txt,
    col_lse,
    (jnp.zeros(img.shape, jnp.float32), jnp.zeros((), jnp.float32)),
    image_grads,
    axes=axes,
    n=n,
    tile=tile,
  )

  def text_grads(chunk, chunk_row_lse, origin, offset, d_txt):
    def tile_fn(rows, start, d_txt):
      z = scale * _dot(rows, chunk.T, precision)  # [text tile, image chunk]
      c = jax.lax.dynamic_slice_in_dim(col_lse, start, tile)
      g = w * (jnp.exp(z - chunk_row_lse[None, :]) + jnp.exp(z - c[:, None]))
      return _update_rows(d_txt, start, jnp.add, scale * _dot(g, chunk, precision))

    return chunk_row_lse, _row_tiles(txt, tile_fn, d_txt, tile, axes)

  zeros = jnp.zeros(txt.shape, jnp.float32)
  _, d_txt = _circle(img, row_lse, zeros, text_grads, axes=axes, n=n, tile=tile)
  # The positives' -z_ii / B terms.
  d_img = d_img - (ct / total) * scale * txt.astype(jnp.float32)
  d_txt = d_txt - (ct / total) * scale * img.astype(jnp.float32)
  d_scale = d_scale - (ct / total) * jnp.sum(_rowdot(img, txt))
  return d_img.astype(img.dtype), d_txt.astype(txt.dtype), d_scale


_softmax_local.defvjp(_softmax_fwd, _softmax_bwd)


# ---------------------------------------------------------------------------------------------
# Sigmoid


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _sigmoid_local(img, txt, scale, bias, axes, n, tile, total, precision):
  return _sigmoid_fwd(img, txt, scale, bias, axes, n, tile, total, precision)[0]


def _sigmoid_fwd(img, txt, scale, bias, axes, n, tile, total, precision):
  neg_inf = jnp.full((txt.shape[0],), -jnp.inf, jnp.float32)
  me = jax.lax.axis_index(tuple(axes))

  def body(chunk, col_max, origin, offset, carry):
    def tile_fn(rows, start, state):
      (acc, row_max), col_max = state
      z = scale * _dot(rows, chunk.T, precision) + bias
      neg = _negatives(z, origin, me, start, offset)
      row_max = _update_rows(row_max, start, jnp.maximum, neg.max(axis=1))
      return (acc + jnp.sum(jax.nn.log_sigmoid(-z)), row_max), jnp.maximum(col_max, neg.max(axis=0))

    carry, col_max = _row_tiles(img, tile_fn, (carry, col_max), tile, axes)
    return col_max, carry

  col_max, (neg, row_max) = _circle(
    txt, neg_inf, (jnp.zeros((), jnp.float32), neg_inf), body, axes=axes, n=n, tile=tile
  )
  pos = scale * _rowdot(img, txt) + bias
  local = -(neg + pos.sum()) / total
  return (local, _hits(pos, row_max, col_max)), (img, txt, scale, bias)


def _sigmoid_bwd(axes, n, tile, total, precision, res, cts):
  img, txt, scale, bias = res
  ct = cts[0]
  w = ct / total
  dummy = jnp.zeros((txt.shape[0],), jnp.float32)

  def image_grads(chunk, aux, origin, offset, carry):
    def tile_fn(rows, start, carry):
      d_img, d_scale, d_bias = carry
      dots = _dot(rows, chunk.T, precision)
      g = w * jax.nn.sigmoid(scale * dots + bias)  # d/dz of -log sigmoid(-z), times w
      d_img = _update_rows(d_img, start, jnp.add, scale * _dot(g, chunk, precision))
      return d_img, d_scale + jnp.sum(g * dots), d_bias + jnp.sum(g)

    return aux, _row_tiles(img, tile_fn, carry, tile, axes)

  zero = jnp.zeros((), jnp.float32)
  _, (d_img, d_scale, d_bias) = _circle(
    txt, dummy, (jnp.zeros(img.shape, jnp.float32), zero, zero), image_grads, axes=axes, n=n, tile=tile
  )

  def text_grads(chunk, aux, origin, offset, d_txt):
    def tile_fn(rows, start, d_txt):
      g = w * jax.nn.sigmoid(scale * _dot(rows, chunk.T, precision) + bias)
      return _update_rows(d_txt, start, jnp.add, scale * _dot(g, chunk, precision))

    return aux, _row_tiles(txt, tile_fn, d_txt, tile, axes)

  zeros = jnp.zeros(txt.shape, jnp.float32)
  _, d_txt = _circle(img, dummy, zeros, text_grads, axes=axes, n=n, tile=tile)
  # The diagonal: -z_ii / B per positive pair.
  d_img = d_img - w * scale * txt.astype(jnp.float32)
  d_txt = d_txt - w * scale * img.astype(jnp.float32)
  d_scale = d_scale - w * jnp.sum(_rowdot(img, txt))
  d_bias = d_bias - w * img.shape[0]
  return d_img.astype(img.dtype), d_txt.astype(txt.dtype), d_scale, d_bias


_sigmoid_local.defvjp(_sigmoid_fwd, _sigmoid_bwd)


# ---------------------------------------------------------------------------------------------
# Entry points (called inside shard_map over ``axes``)


def _setup(image_emb, axes, tile):
  n = jax.lax.psum(1, tuple(axes))
  b = image_emb.shape[0]
  tile = min(tile, b)
  _check_tiles(b, tile)
  return n, tile, n * b


def _rowdot(img, txt):
  """The positives' dot products, in f32."""
  return jnp.sum(img.astype(jnp.float32) * txt.astype(jnp.float32), axis=1)


def _inputs(image_emb, text_emb, precision: str):
  """The embeddings as the ring moves them: bf16 chunks for "bf16", f32 for "highest"."""
  check_precision(precision)
  dt = jnp.bfloat16 if precision == "bf16" else jnp.float32
  return image_emb.astype(dt), text_emb.astype(dt)


def _global(local, hits, axes, total):
  hits = jax.lax.psum(jax.lax.stop_gradient(hits), tuple(axes)) / total
  return jax.lax.psum(local, tuple(axes)), {"i2t_acc": hits[0], "t2i_acc": hits[1]}


def softmax_ring_sharded(
  image_emb,
  text_emb,
  logit_scale,
  logit_bias,
  axes: AxisNames,
  *,
  tile_size: int = 4096,
  precision: str = "highest",
):
  """Global CLIP loss by the tiled ring; returns (global mean loss, in-batch accuracies).

  ``precision`` of the tiles' matmuls (:data:`PRECISIONS`); the trainer passes
  ``config.loss.precision`` ("bf16" by default)."""
  del logit_bias
  n, tile, total = _setup(image_emb, axes, tile_size)
  scale = jax.lax.pcast(logit_scale, tuple(axes), to="varying")
  img, txt = _inputs(image_emb, text_emb, precision)
  local, hits = _softmax_local(img, txt, scale, tuple(axes), n, tile, total, precision)
  return _global(local, hits, axes, total)


def sigmoid_ring_sharded(
  image_emb,
  text_emb,
  logit_scale,
  logit_bias,
  axes: AxisNames,
  *,
  tile_size: int = 4096,
  precision: str = "highest",
):
  """Global SigLIP loss by the tiled ring; returns (global mean loss, in-batch accuracies)."""
  if logit_bias is None:
    raise ValueError("the sigmoid loss needs a logit bias (config.model.init_logit_bias)")
  n, tile, total = _setup(image_emb, axes, tile_size)
  scale = jax.lax.pcast(logit_scale, tuple(axes), to="varying")
  bias = jax.lax.pcast(logit_bias, tuple(axes), to="varying")
  img, txt = _inputs(image_emb, text_emb, precision)
  local, hits = _sigmoid_local(img, txt, scale, bias, tuple(axes), n, tile, total, precision)
  return _global(local, hits, axes, total)
