"""Self-distillation losses against an EMA teacher (SigLIP 2, Tschannen et al. 2025,
arXiv:2502.14786, Sec. 2.3): pure functions on global arrays.

* :func:`sinkhorn_targets`: the teacher's soft assignments to the K prototypes, balanced over the
  batch by Sinkhorn-Knopp (SwAV, Caron et al. 2020, Sec. 3.1; DINOv2's alternative to DINO's
  centering). Stateless: no running center lives in the train state, so the targets depend only
  on the teacher's logits of this batch (vlpt's choice; SILC and TIPS follow DINO / iBOT, which
  center and sharpen).
* :func:`soft_cross_entropy`: H(targets, softmax(student / temperature)), optionally over a
  subset of rows (the masked patches of masked prediction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sinkhorn_targets(logits: jax.Array, temperature: float, iterations: int = 3) -> jax.Array:
  """Teacher logits [M, K] -> targets [M, K], each row a distribution over the prototypes.

  Alternately normalizes the prototypes' (columns') and the rows' mass of exp(logits / temp) so
  that every prototype receives about M / K of the rows' total mass: the uniform-marginal
  constraint that keeps the teacher from collapsing onto few prototypes. ``iterations`` = 3 as
  SwAV and DINOv2. Computed in float32 in log space (no overflow at temperature 0.04); no gradient
  flows (the teacher is held by ``stop_gradient`` anyway).
  """
  m, k = logits.shape
  log_q = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
  for _ in range(iterations):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(k)  # columns: 1/K
    log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - jnp.log(m)  # rows: 1/M
  return jnp.exp(log_q + jnp.log(m))  # rows sum to 1


def soft_cross_entropy(
  targets: jax.Array, student_logits: jax.Array, temperature: float, where: jax.Array | None = None
) -> jax.Array:
  """Mean over rows (those with ``where`` True, when given) of -sum_k t_k log softmax(s / temp)_k.

  ``targets`` [..., K] and ``student_logits`` [..., K]; ``where`` [...] bool. With no selected
  row the mean is 0 (not NaN).
  """
  logp = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  ce = -jnp.sum(jax.lax.stop_gradient(targets) * logp, axis=-1)
  if where is None:
    return jnp.mean(ce)
  w = where.astype(jnp.float32)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
