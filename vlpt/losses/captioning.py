"""The CoCa captioning term (Yu et al. 2022, Eq. 2): token cross-entropy of the decoder.

``logits [B, L, V]`` predict ``labels [B, L]`` (the text shifted by one); padding tokens are
ignored and the mean runs over every non-pad target token of the whole batch (not per sequence),
as open_clip's ``CoCaLoss``. CoCa's total objective (Eq. 3) is
``contrastive + config.loss.caption_weight * caption`` (``vlpt.train.objectives.coca``).
"""

from __future__ import annotations

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


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``values`` where ``mask`` holds, over the whole batch (0 when nothing is masked in):
  the LocCa tasks' loss reads only the predicted part of each sequence, never its prefix."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
