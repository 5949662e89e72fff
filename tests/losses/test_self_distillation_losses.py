"""Self-distillation losses (vlpt.losses.self_distillation): Sinkhorn-Knopp targets are balanced
over the batch and rows are distributions; the soft cross-entropy reads only the selected rows."""

import jax
import jax.numpy as jnp
import numpy as np

from vlpt.losses.self_distillation import sinkhorn_targets, soft_cross_entropy


def test_sinkhorn_targets_have_uniform_marginals_over_the_batch():
  # logits that favour the last prototypes (at the scale of a head on L2-normalized features):
  # the balancing spreads the batch over all K
  m, k = 512, 16
  logits = 0.1 * (jax.random.normal(jax.random.key(0), (m, k)) + jnp.linspace(0.0, 3.0, k))
  for iterations, rtol in ((3, 0.06), (10, 1e-3)):
    q = np.asarray(sinkhorn_targets(logits, temperature=0.04, iterations=iterations))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)  # each row: a distribution
    np.testing.assert_allclose(q.sum(axis=0) / m, 1.0 / k, rtol=rtol)  # each prototype: M / K
  # a plain softmax of the same logits is far from balanced
  p = np.asarray(jax.nn.softmax(logits / 0.04, axis=-1))
  assert np.abs(p.sum(axis=0) / m - 1.0 / k).max() > 0.05 / k
  assert np.isfinite(np.asarray(sinkhorn_targets(logits * 100.0, 0.04))).all()  # no overflow


def test_sinkhorn_targets_carry_no_gradient():
  logits = jax.random.normal(jax.random.key(1), (8, 4))
  g = jax.grad(lambda x: jnp.sum(sinkhorn_targets(x, 0.1) * jnp.arange(4.0)))(logits)
  assert not np.asarray(g).any()


def test_soft_cross_entropy_reads_only_selected_rows():
  t = jax.nn.softmax(jax.random.normal(jax.random.key(2), (2, 5, 7)), axis=-1)
  s = jax.random.normal(jax.random.key(3), (2, 5, 7))
  where = jnp.asarray([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], bool)
  full = soft_cross_entropy(t, s, 0.1, where)
  changed = jnp.where(where[..., None], s, s + 100.0 * jax.random.normal(jax.random.key(4), s.shape))
  np.testing.assert_allclose(soft_cross_entropy(t, changed, 0.1, where), full, rtol=1e-6)
  ce = -(t * jax.nn.log_softmax(s / 0.1, axis=-1)).sum(-1)
  np.testing.assert_allclose(full, ce[where].mean(), rtol=1e-5)
  assert float(soft_cross_entropy(t, s, 0.1, jnp.zeros((2, 5), bool))) == 0.0
