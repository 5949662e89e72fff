"""Exact contrastive gradient accumulation: k micro-batches == one full batch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpt import sharding as S
from vlpt.config import load_config
from vlpt.train.accumulation import merge_micro_batches, split_micro_batches
from vlpt.train.loop import make_loader
from vlpt.train.objectives import objective_class
from vlpt.train.setup import build, initial_state
from vlpt.train.step import make_train_step

from conftest import REPO


def demo_config(variant="tiny"):
  return load_config(os.path.join(REPO, "configs", f"demo.py:{variant}"))


def test_split_merge_roundtrip_keeps_device_blocks():
  x = jnp.arange(32)
  parts = split_micro_batches(x, k=4, n=8)
  assert parts.shape == (4, 8)
  assert list(np.asarray(parts[1])) == [1 + 4 * d for d in range(8)]  # one row of each device
  assert np.array_equal(merge_micro_batches(parts, n=8), x)


def one_step(config, state, batch):
  setup = build(config)
  step = make_train_step(setup, objective_class(config)(setup))
  with S.activate(setup.mesh, setup.rules):
    state = jax.device_put(state, setup.state_shardings)
    new_state, metrics = step(state, batch)
  return jax.device_get(new_state), jax.device_get(metrics.compute())


@pytest.mark.parametrize("loss,bias", [("softmax", None), ("sigmoid", -10.0)])
def test_four_micro_batches_equal_one_full_batch(loss, bias):
  config = demo_config()
  config.loss.name = loss
  config.model.init_logit_bias = bias
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0
  setup = build(config)
  state = jax.device_get(initial_state(setup))
  loader = make_loader(setup)
  batch = jax.device_get(next(loader))
  loader.close()
  with config.unlocked():
    config.accumulation_steps = 1
  full_state, full_metrics = one_step(config, state, batch)
  config.accumulation_steps = 4
  acc_state, acc_metrics = one_step(config, state, batch)
  assert acc_metrics["loss"] == pytest.approx(full_metrics["loss"], abs=1e-6)
  assert acc_metrics["grad_norm"] == pytest.approx(full_metrics["grad_norm"], rel=1e-5)
  for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(full_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  # The temperature (and bias) moved, by the same amount: their gradient is counted once.
  assert acc_state.params["logit_scale"] != state.params["logit_scale"]
  np.testing.assert_allclose(
    acc_state.params["logit_scale"], full_state.params["logit_scale"], atol=1e-7
  )
  if bias is not None:
    assert acc_state.params["logit_bias"] != state.params["logit_bias"]
    np.testing.assert_allclose(
      acc_state.params["logit_bias"], full_state.params["logit_bias"], atol=1e-7
    )


@pytest.mark.parametrize("loss,bias", [("softmax", None), ("sigmoid", -10.0)])
def test_accumulated_gradient_is_the_full_batch_gradient(loss, bias):
  """Every gradient, temperature and bias included (open_clip's accumulation gives k x those)."""
  config = demo_config()
  config.loss.name = loss
  config.model.init_logit_bias = bias
  setup = build(config)
  state = initial_state(setup)
  loader = make_loader(setup)
  batch = next(loader)
  loader.close()
  grads = {}
  for k in (1, 4):
    config.accumulation_steps = k
    objective = objective_class(config)(build(config))
    with S.activate(setup.mesh, setup.rules):
      (value, _), grads[k] = jax.jit(objective.value_and_grad)(state.params, batch)
  leaves1, leaves4 = jax.tree.leaves(grads[1]), jax.tree.leaves(grads[4])
  for a, b in zip(leaves4, leaves1):  # fp32 sums in another order: a few ulps apart
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)
  assert abs(float(grads[1]["logit_scale"])) > 1e-3  # a real gradient, compared exactly
  np.testing.assert_allclose(float(grads[4]["logit_scale"]), float(grads[1]["logit_scale"]), rtol=1e-5)
  if bias is not None:
    np.testing.assert_allclose(float(grads[4]["logit_bias"]), float(grads[1]["logit_bias"]), rtol=1e-5)


def test_patch_dropout_with_two_micro_batches_equals_one_batch():
  """Patch dropout's per-example keys are split with the batch, so micro-batch j drops the same
  patches of the same examples as the full batch does: the update is the same."""
  config = demo_config()
  config.model.image.patch_dropout = 0.5
  config.optimizer.warmup_steps = 0
  setup = build(config)
  state = jax.device_get(initial_state(setup))
  loader = make_loader(setup)
  batch = jax.device_get(next(loader))
  loader.close()
  full_state, full_metrics = one_step(config, state, batch)
  config.accumulation_steps = 2
  acc_state, acc_metrics = one_step(config, state, batch)
  assert acc_metrics["loss"] == pytest.approx(full_metrics["loss"], abs=1e-6)
  assert acc_metrics["grad_norm"] == pytest.approx(full_metrics["grad_norm"], rel=1e-5)
  for a, b in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(full_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  # and dropout acted: without it the same step gives another loss
  config.model.image.patch_dropout = 0.0
  config.accumulation_steps = 1
  _, plain_metrics = one_step(config, state, batch)
  assert abs(plain_metrics["loss"] - full_metrics["loss"]) > 1e-4
