"""Contrastive losses over the global batch.

Two forms of each loss:

* ``softmax_contrastive`` / ``sigmoid_contrastive``: plain functions of whole-batch arrays, usable
  anywhere (tests, notebooks, a single device). Public API.
* ``*_sharded``: the same loss computed inside ``jax.shard_map`` from each device's block of the
  batch. Every device scores its own image rows against the text embeddings of *all* devices (and
  its text rows against all images), gathered with ``all_gather``; the gather's transpose is a
  reduce-scatter, so the gradient is exactly the whole-batch gradient (no 1/W factor, no missing
  cross terms — unlike gathering without gradient). The returned loss is already summed over
  devices: it is the true global loss, identical on every device.

Embeddings are L2-normalized; ``logit_scale`` is already exponentiated (open_clip's convention).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

AxisNames = Sequence[str]


def _softmax_terms(logits: jax.Array, positive: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-row cross-entropy against the positive column, with ALIGN-style label smoothing."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, positive[:, None], axis=-1)[:, 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
  return nll


def softmax_contrastive(
  image_emb: jax.Array,
  text_emb: jax.Array,
  logit_scale: jax.Array,
  logit_bias: jax.Array | None = None,
  *,
  label_smoothing: float = 0.0,
) -> jax.Array:
  """CLIP's symmetric InfoNCE loss (Radford et al. 2021, Fig. 3), mean over the batch.

  ``(CE(s I T^T, diag) + CE(s T I^T, diag)) / 2``. A constant ``logit_bias`` cancels in the
  softmax and is accepted only so every loss shares one signature.
  """
  del logit_bias
  logits = logit_scale * jnp.dot(image_emb, text_emb.T, precision="highest")
  labels = jnp.arange(logits.shape[0])
  i2t = _softmax_terms(logits, labels, label_smoothing)
  t2i = _softmax_terms(logits.T, labels, label_smoothing)
  return (i2t.mean() + t2i.mean()) / 2


def leave_one_out_contrastive(
  image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array | None = None
) -> jax.Array:
  """InfoLOOB (Fürst et al. 2022, CLOOB, Eq. 5) = DCL (Yeh et al. 2022, Eq. 6), symmetric.

  The positive is left out of the denominator: per row
  ``-z_ii + log sum_{j != i} exp(z_ij)`` (and the same per column), averaged over both
  directions. Without the positive in the normalizer the gradient no longer shrinks as the
  positive pair becomes easy (the "negative-positive coupling" DCL removes).
  """
  del logit_bias
  logits = logit_scale * jnp.dot(image_emb, text_emb.T, precision="highest")
  eye = jnp.eye(logits.shape[0], dtype=bool)
  negatives = jnp.where(eye, -jnp.inf, logits)
  pos = jnp.diagonal(logits)
  rows = jax.nn.logsumexp(negatives, axis=1) - pos
  cols = jax.nn.logsumexp(negatives, axis=0) - pos
  return (rows.mean() + cols.mean()) / 2


def sigmoid_contrastive(
  image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array
) -> jax.Array:
  """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Eq. 1 / Alg. 1).

  ``-sum_ij log sigmoid(z_ij (s <I_i, T_j> + b)) / B`` with z = +1 on the diagonal, -1 elsewhere.
  """
  logits = logit_scale * jnp.dot(image_emb, text_emb.T, precision="highest") + logit_bias
  z = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / logits.shape[0]


# --------------------------------------------------------------------------------------------
# Sharded forms (run inside jax.shard_map over the batch axes).


def _gather(x: jax.Array, axes: AxisNames) -> jax.Array:
  return jax.lax.all_gather(x, tuple(axes), axis=0, tiled=True)


def _block_offset(local_batch: int, axes: AxisNames) -> jax.Array:
  return jax.lax.axis_index(tuple(axes)) * local_batch


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _clip_gather_local(img, all_txt, scale, axes):
  return _clip_gather_fwd(img, all_txt, scale, axes)[0]


def _clip_gather_stats(img, all_txt, scale, axes):
  """This device's logits and the row / global column log-sum-exps."""
  z = scale * jnp.dot(img, all_txt.T, precision="highest")  # [b, B]
  row_lse = jax.nn.logsumexp(z, axis=1)
  col_max = jax.lax.pmax(z.max(axis=0), axes)
  col_lse = col_max + jnp.log(jax.lax.psum(jnp.exp(z - col_max).sum(axis=0), axes))
  return z, row_lse, col_lse


def _clip_gather_fwd(img, all_txt, scale, axes):
  b, n = img.shape[0], all_txt.shape[0]
  offset = _block_offset(b, axes)
  z, row_lse, col_lse = _clip_gather_stats(img, all_txt, scale, axes)
  positive = offset + jnp.arange(b)
  pos = jnp.take_along_axis(z, positive[:, None], axis=1)[:, 0]
  own = jax.lax.dynamic_slice_in_dim(col_lse, offset, b)
  local = (jnp.sum(row_lse - pos) + jnp.sum(own - pos)) / (2 * n)
  negatives = jnp.where(jnp.arange(n)[None, :] == positive[:, None], -jnp.inf, z)
  col_best = jax.lax.dynamic_slice_in_dim(jax.lax.pmax(negatives.max(axis=0), axes), offset, b)
  hits = jnp.stack([jnp.sum(pos > negatives.max(axis=1)), jnp.sum(pos > col_best)])
  return (local, hits.astype(jnp.float32)), (img, all_txt, scale, row_lse, col_lse)


def _clip_gather_bwd(axes, res, cts):
  """dL/dz = (softmax over the row + softmax over the column - 2 at the positive) / 2B, built
  from recomputed logits: two b x B buffers at most, none kept from the forward pass."""
  img, all_txt, scale, row_lse, col_lse = res
  b, n = img.shape[0], all_txt.shape[0]
  w = cts[0] / (2 * n)
  z = scale * jnp.dot(img, all_txt.T, precision="highest")
  positive = _block_offset(b, axes) + jnp.arange(b)
  at_positive = jnp.arange(n)[None, :] == positive[:, None]
  g = w * (
    jnp.exp(z - row_lse[:, None]) + jnp.exp(z - col_lse[None, :]) - 2.0 * at_positive.astype(z.dtype)
  )
  d_img = scale * jnp.dot(g, all_txt, precision="highest")
  d_txt = scale * jnp.dot(g.T, img, precision="highest")
  d_scale = jnp.sum(g * z) / scale
  return d_img, d_txt, d_scale


_clip_gather_local.defvjp(_clip_gather_fwd, _clip_gather_bwd)


def softmax_contrastive_sharded(
  image_emb: jax.Array,
  text_emb: jax.Array,
  logit_scale: jax.Array,
  logit_bias: jax.Array | None,
  axes: AxisNames,
  *,
  label_smoothing: float = 0.0,
  leave_one_out: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Global CLIP loss from local blocks; returns (global mean loss, global in-batch accuracies).

  ``leave_one_out=True`` gives InfoLOOB / DCL (:func:`leave_one_out_contrastive`): the positive
  pairs are masked out of every normalizer.

  One b x B logit matrix per device (local images against all gathered texts): the rows give
  image->text; the text->image column statistics (log-sum-exp, row mean, best negative) are
  reduced over devices with pmax/psum of B-vectors, so no second matrix is built. The plain CLIP
  loss (no smoothing, no leave-one-out) has its own VJP that recomputes the logits in the
  backward pass, so at most two b x B buffers are live.
  """
  del logit_bias
  axes = tuple(axes)
  b = image_emb.shape[0]
  all_txt = _gather(text_emb, axes)
  n = all_txt.shape[0]
  if not leave_one_out and not label_smoothing:
    # plain CLIP: a custom VJP that recomputes the logits instead of storing them
    scale = jax.lax.pcast(logit_scale, axes, to="varying")
    local, hits = _clip_gather_local(image_emb, all_txt, scale, axes)
    hits = jax.lax.psum(jax.lax.stop_gradient(hits), axes) / n
    return jax.lax.psum(local, axes), {"i2t_acc": hits[0], "t2i_acc": hits[1]}
  offset = _block_offset(b, axes)
  positive = offset + jnp.arange(b)
  logits = logit_scale * jnp.dot(image_emb, all_txt.T, precision="highest")  # [b, B]
  pos = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  is_positive = jnp.arange(n)[None, :] == positive[:, None]
  if leave_one_out:
    if label_smoothing:
      raise ValueError("label smoothing does not combine with the leave-one-out losses")
    normalized = jnp.where(is_positive, -jnp.inf, logits)
    i2t = jnp.sum(jax.nn.logsumexp(normalized, axis=1) - pos)
  else:
    normalized = logits
    i2t = _softmax_terms(logits, positive, label_smoothing).sum()
  # Column log-sum-exp over every device's rows (any shift m is exact; stop its gradient).
  col_max = jax.lax.pmax(jax.lax.stop_gradient(normalized.max(axis=0)), axes)
  col_lse = col_max + jnp.log(jax.lax.psum(jnp.exp(normalized - col_max).sum(axis=0), axes))
  own = jax.lax.dynamic_slice_in_dim(col_lse, offset, b)
  t2i_nll = own - pos
  if label_smoothing:
    col_mean = jax.lax.psum(logits.sum(axis=0), axes) / n
    t2i_nll = (1.0 - label_smoothing) * t2i_nll - label_smoothing * (
      jax.lax.dynamic_slice_in_dim(col_mean, offset, b) - own
    )
  loss = jax.lax.psum(i2t + t2i_nll.sum(), axes) / (2 * n)
  negatives = jnp.where(is_positive, -jnp.inf, jax.lax.stop_gradient(logits))
  pos = jax.lax.stop_gradient(pos)  # accuracies only from here on
  best_negative_col = jax.lax.pmax(negatives.max(axis=0), axes)
  metrics = {
    "i2t_acc": jax.lax.psum(jnp.sum(pos > negatives.max(axis=1)), axes) / n,
    "t2i_acc": jax.lax.psum(
      jnp.sum(pos > jax.lax.dynamic_slice_in_dim(best_negative_col, offset, b)), axes
    )
    / n,
  }
  return loss, metrics


def sigmoid_contrastive_sharded(
  image_emb: jax.Array,
  text_emb: jax.Array,
  logit_scale: jax.Array,
  logit_bias: jax.Array,
  axes: AxisNames,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Global SigLIP loss from local blocks (local image rows against all texts).

  Both in-batch accuracies come from the loss's own b x B logits (a hit: the positive beats every
  negative of its row / column, as in the softmax and ring losses): the text->image column
  maxima are reduced over devices with one pmax of a B-vector, so no image gather and no second
  matmul run for them.
  """
  if logit_bias is None:
    raise ValueError(
      "the sigmoid loss needs a logit bias: set config.model.init_logit_bias (SigLIP uses -10)"
    )
  axes = tuple(axes)
  b = image_emb.shape[0]
  all_txt = _gather(text_emb, axes)
  n = all_txt.shape[0]
  offset = _block_offset(b, axes)
  positive = offset + jnp.arange(b)
  logits = logit_scale * jnp.dot(image_emb, all_txt.T, precision="highest") + logit_bias
  is_positive = jnp.arange(n)[None, :] == positive[:, None]
  z = jnp.where(is_positive, 1.0, -1.0)
  loss = -jax.lax.psum(jnp.sum(jax.nn.log_sigmoid(z * logits)), axes) / n
  scores = jax.lax.stop_gradient(logits)  # accuracies only from here on
  pos = jnp.take_along_axis(scores, positive[:, None], axis=1)[:, 0]
  negatives = jnp.where(is_positive, -jnp.inf, scores)
  # this device's rows hold the positives of columns offset..offset+b
  best_negative_col = jax.lax.dynamic_slice_in_dim(jax.lax.pmax(negatives.max(axis=0), axes), offset, b)
  hits = jnp.stack([jnp.sum(pos > negatives.max(axis=1)), jnp.sum(pos > best_negative_col)])
  hits = jax.lax.psum(hits, axes) / n
  return loss, {"i2t_acc": hits[0], "t2i_acc": hits[1]}


def _uniformity_terms(local: jax.Array, everyone: jax.Array, offset: jax.Array, t: float) -> jax.Array:
  """Sum over local rows i and all j != i of exp(-t ||x_i - x_j||^2) (unit vectors)."""
  sq = 2.0 - 2.0 * jnp.dot(local, everyone.T, precision="highest")
  rows = offset + jnp.arange(local.shape[0])
  self_pair = jnp.arange(everyone.shape[0])[None, :] == rows[:, None]
  return jnp.sum(jnp.where(self_pair, 0.0, jnp.exp(-t * sq)))


def uniformity_alignment(
  image_emb: jax.Array, text_emb: jax.Array, *, t: float = 2.0
) -> tuple[jax.Array, jax.Array]:
  """Wang & Isola (2020) alignment ``E ||x_i - y_i||^2`` (Eq. 4, alpha = 2) and uniformity
  ``log E_{i != j} exp(-t ||x_i - x_j||^2)`` (Eq. 5), averaged over the two modalities."""
  b = image_emb.shape[0]
  align = jnp.mean(jnp.sum(jnp.square(image_emb - text_emb), axis=-1))
  zero = jnp.zeros((), jnp.int32)
  uniform = (
    jnp.log(_uniformity_terms(image_emb, image_emb, zero, t) / (b * (b - 1)))
    + jnp.log(_uniformity_terms(text_emb, text_emb, zero, t) / (b * (b - 1)))
  ) / 2
  return align, uniform


def softmax_uniformity_alignment_sharded(
  image_emb,
  text_emb,
  logit_scale,
  logit_bias,
  axes: AxisNames,
  *,
  align_weight: float = 1.0,
  uniform_weight: float = 1.0,
):
  """CLIP + alignment + uniformity, as proposed to close the "contrastive gap"
  (Fahim et al. 2024, Sec. 5): ``L_CLIP + w_a L_align + w_u L_unif`` over the global batch.

  Uniformity pairs every example with every other of the same modality, so both modalities are
  gathered (b x B intra-modal matrices per device, like the gather loss).
  """
  axes = tuple(axes)
  loss, metrics = softmax_contrastive_sharded(image_emb, text_emb, logit_scale, logit_bias, axes)
  b = image_emb.shape[0]
  n = b * jax.lax.psum(1, axes)
  offset = _block_offset(b, axes)
  align = jax.lax.psum(jnp.sum(jnp.square(image_emb - text_emb)), axes) / n
  pairs = n * (n - 1)
  uniform = (
    jnp.log(
      jax.lax.psum(_uniformity_terms(image_emb, _gather(image_emb, axes), offset, 2.0), axes) / pairs
    )
    + jnp.log(
      jax.lax.psum(_uniformity_terms(text_emb, _gather(text_emb, axes), offset, 2.0), axes) / pairs
    )
  ) / 2
  metrics = {**metrics, "align": align, "uniformity": uniform}
  return loss + align_weight * align + uniform_weight * uniform, metrics
