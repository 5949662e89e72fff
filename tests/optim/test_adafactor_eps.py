"""Adafactor honours config.optimizer.eps as its epsilon1 (Shazeer & Stern 2018, Alg. 4)."""

import os

import jax
import numpy as np
import optax
import pytest

from vlpt import optim
from vlpt.config import default_config, load_config
from vlpt.optim import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(eps, lr=0.1):
  c = default_config()
  c.total_steps = 10
  c.optimizer.update(
    name="adafactor",
    lr=lr,
    warmup_steps=0,
    schedule="linear",
    end_lr_factor=1.0,
    b1=0.0,
    b2=0.999,
    eps=eps,
    weight_decay=0.0,
    grad_clip_norm=0.0,
  )
  return c


def _two_steps(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    out.append(jax.tree.map(np.asarray, updates))
  return out


@pytest.mark.parametrize("eps", [1e-30, 1e-3])
def test_adafactor_eps_is_epsilon1_as_in_optax(eps):
  """Two steps of vlpt's Adafactor (no momentum, constant lr) equal optax's factored RMS scaling
  with the same epsilon (added to g^2 before the row/column means); 1e-3 is far from the old
  hard-wired 1e-30, so ignoring eps shows."""
  rng = np.random.default_rng(0)
  params = {"w": np.zeros((64, 48), np.float32), "v": np.zeros((5,), np.float32)}
  grads = [
    {
      "w": (rng.normal(size=(64, 48)) * 0.03).astype(np.float32),
      "v": (rng.normal(size=(5,)) * 0.03).astype(np.float32),
    }
    for _ in range(2)
  ]
  got = _two_steps(build_optimizer(_config(eps), params), params, grads)
  reference = optax.chain(
    optax.scale_by_factored_rms(decay_rate=0.8, min_dim_size_to_factor=32, epsilon=eps),
    optax.scale(-0.1),
  )
  want = _two_steps(reference, params, grads)
  for g, w in zip(got, want):
    for key in ("w", "v"):
      np.testing.assert_allclose(g[key], w[key], rtol=2e-5)


def test_eps_none_is_each_optimizers_own_default():
  rng = np.random.default_rng(1)
  params = {"w": np.zeros((64, 48), np.float32)}
  grads = [{"w": (rng.normal(size=(64, 48)) * 1e-4).astype(np.float32)} for _ in range(2)]
  default = _two_steps(build_optimizer(_config(None), params), params, grads)
  explicit = _two_steps(build_optimizer(_config(1e-30), params), params, grads)
  for d, e in zip(default, explicit):
    np.testing.assert_array_equal(d["w"], e["w"])
  adamw = _config(None)
  adamw.optimizer.name = "adamw"
  one = _two_steps(build_optimizer(adamw, params), params, grads)
  adamw.optimizer.eps = 1e-6
  other = _two_steps(build_optimizer(adamw, params), params, grads)
  for a, b in zip(one, other):
    np.testing.assert_array_equal(a["w"], b["w"])


@pytest.mark.parametrize("recipe", ["coca", "lit", "siglip"])
def test_adafactor_recipes_keep_epsilon1_1e_30(recipe):
  config = load_config(os.path.join(REPO, "configs", f"{recipe}.py"))
  assert config.optimizer.name == "adafactor"
  assert config.optimizer.eps == 1e-30


def test_check_config_rejects_unusable_values():
  optim.check_config(_config(None).optimizer)
  optim.check_config(_config(1e-30).optimizer)
  for eps in (0.0, -1e-8, float("nan")):
    with pytest.raises(ValueError, match="config.optimizer.eps"):
      optim.check_config(_config(eps).optimizer)
  bad = _config(None).optimizer
  bad.name = "sgd"
  with pytest.raises(ValueError, match="config.optimizer.name='sgd'"):
    optim.check_config(bad)
