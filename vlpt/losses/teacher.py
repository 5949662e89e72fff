"""Losses that use a teacher's (or a frozen tower's) embeddings: distillation and CWCL.

Both take whole-batch arrays, like ``softmax_contrastive``. They are exact dense forms (each
needs the teacher's full B x B similarity), so they have no ring variant; the trainer runs them
on global arrays under jit (``config.loss.name`` "distill" / "cwcl" with
``config.teacher.checkpoint``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpt.losses.contrastive import softmax_contrastive


def _cross_entropy(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """H(softmax(target), log_softmax(logits)), summed over columns, mean over rows."""
  p = jax.nn.softmax(target_logits, axis=-1)
  return -jnp.mean(jnp.sum(p * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def distillation_loss(
  image_emb: jax.Array,
  text_emb: jax.Array,
  logit_scale: jax.Array,
  teacher_image_emb: jax.Array,
  teacher_text_emb: jax.Array,
  teacher_logit_scale: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """(contrastive, distillation) terms of open_clip's DistillClipLoss.

  The student's image->text and text->image distributions are pulled towards the teacher's
  (each at its own temperature) by cross-entropy, averaged over the two directions (the
  knowledge-distillation objective of Hinton et al. 2015 applied to CLIP's in-batch softmax).
  """
  student = logit_scale * jnp.dot(image_emb, text_emb.T, precision="highest")
  teacher = teacher_logit_scale * jnp.dot(teacher_image_emb, teacher_text_emb.T, precision="highest")
  distill = (_cross_entropy(teacher, student) + _cross_entropy(teacher.T, student.T)) / 2
  return softmax_contrastive(image_emb, text_emb, logit_scale), distill


def cwcl_loss(
  image_emb: jax.Array,
  text_emb: jax.Array,
  logit_scale: jax.Array,
  teacher_image_emb: jax.Array,
  teacher_text_emb: jax.Array,
) -> jax.Array:
  """Continuously weighted contrastive loss (Srinivasa et al. 2023, Eq. 3), symmetric.

  Instead of one positive per row, every pair (i, j) is a positive with weight
  ``w_ij = (1 + <q_i, q_j>) / 2`` from a frozen (teacher) tower's intra-modal similarity of the
  query side; row i's loss is ``-sum_j w_ij log softmax_j(z_i) / sum_j w_ij``. Image->text rows
  are weighted by the teacher's image similarities, text->image rows by its text similarities.
  """
  logits = logit_scale * jnp.dot(image_emb, text_emb.T, precision="highest")
  w_img = (1.0 + jnp.dot(teacher_image_emb, teacher_image_emb.T, precision="highest")) / 2
  w_txt = (1.0 + jnp.dot(teacher_text_emb, teacher_text_emb.T, precision="highest")) / 2

  def direction(z, w):
    return jnp.mean(-jnp.sum(w * jax.nn.log_softmax(z, axis=-1), axis=-1) / jnp.sum(w, axis=-1))

  return (direction(logits, w_img) + direction(logits.T, w_txt)) / 2
