"""The CoCa captioning term (Yu et al. 2022, Eq. 2): token cross-entropy of the decoder.

``logits [B, L, V]`` predict ``labels [B, L]`` (the text shifted by one); padding tokens are
ignored and the mean runs over every non-pad target token of the whole batch (not per sequence),
as open_clip's ``CoCaLoss``. CoCa's total objective (Eq. 3) is
``contrastive + config.loss.caption_weight * caption`` (``vlpt.train.objectives.coca``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def caption_loss(logits: jax.Array, labels: jax.Array, *, pad_id: int = 0) -> jax.Array:
  """Mean token negative log-likelihood over non-pad targets."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  mask = (labels != pad_id).astype(jnp.float32)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def token_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood [..., L] of ``labels`` under ``logits`` [..., L, V]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def chunked_token_nll(
  hidden: jax.Array, project: Callable[[jax.Array], jax.Array], labels: jax.Array, chunk: int
) -> jax.Array:
  """``token_nll(project(hidden), labels)`` [B, L], ``chunk`` positions at a time.

  ``hidden`` [B, L, W] are the decoder's final states and ``project`` its output head. Each
  chunk's logits are recomputed in the backward pass (``jax.checkpoint`` inside a ``lax.scan``),
  so the step holds [B, chunk, V] logits instead of [B, L, V]: with a 256k vocabulary (SigLIP 2's
  Gemma tokenizer) at 64+ positions the whole tensor is gigabytes per chip, its log-softmax and
  gradient as much again. ``chunk`` <= 0 or >= L: all positions at once (the same numbers).
  """
  b, length = labels.shape
  if chunk <= 0 or chunk >= length:
    return token_nll(project(hidden), labels)
  pad = -length % chunk
  n = (length + pad) // chunk
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, hidden.shape[-1])
  y = jnp.pad(labels, ((0, 0), (0, pad))).reshape(b, n, chunk)

  @jax.checkpoint
  def one(h_chunk, y_chunk):
    return token_nll(project(h_chunk), y_chunk)

  def body(carry, xs):
    return carry, one(*xs)

  _, nll = jax.lax.scan(body, None, (jnp.moveaxis(h, 1, 0), jnp.moveaxis(y, 1, 0)))
  return jnp.moveaxis(nll, 0, 1).reshape(b, n * chunk)[:, :length]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``values`` where ``mask`` holds, over the whole batch (0 when nothing is masked in):
  the LocCa tasks' loss reads only the predicted part of each sequence, never its prefix."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
