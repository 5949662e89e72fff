"""SigLIP 2's self-distillation stage (vlpt.train.objectives.self_distillation) on
``configs/siglip2.py:demo`` (sigmoid + LocCa + the stage): before the start the terms are 0 and
the loss and gradient are the objective's without them; after it both terms are positive and
train the heads; the EMA teacher gets no gradient; config errors are one line; a short run logs
the terms from the start on (slow tier)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpt import sharding as S
from vlpt.config import load_config
from vlpt.errors import ConfigError
from vlpt.train.objectives import ContrastiveObjective, LoccaObjective, objective_class
from vlpt.train.objectives.self_distillation import TERMS, SelfDistillation, start_step
from vlpt.train.validation import validate

from conftest import REPO

RECIPE = os.path.join(REPO, "configs", "siglip2.py") + ":demo"


def _config(**overrides):
  c = load_config(RECIPE)
  c.batch_size = 16
  c.total_steps = 10
  c.log_every_steps = 2
  c.eval_every_steps = c.checkpoint_every_steps = 10
  c.eval.datasets = {}
  c.self_distillation.start_fraction = 0.5
  for key, value in overrides.items():
    *path, last = key.split(".")
    target = c
    for part in path:
      target = target[part]
    target[last] = value
  return c


@pytest.fixture(scope="module")
def demo():
  from vlpt.train.loop import make_loader
  from vlpt.train.setup import build, initial_state

  config = _config()
  setup = build(config)
  state = initial_state(setup)
  loader = make_loader(setup)
  batch = next(loader)
  loader.close()
  return setup, state, batch


def _value_and_grad(setup, objective, state, batch, step):
  state = state.replace(step=jnp.asarray(step, state.step.dtype))
  with S.activate(setup.mesh, setup.rules):
    fn = jax.jit(lambda s, b: objective.value_and_grad(s.params, b, objective.step_inputs(s, None)))
    (loss, metrics), grads = fn(state, batch)
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


def test_demo_composes_the_stage_with_locca_and_sigmoid_composes_with_contrastive():
  cls = objective_class(_config())
  assert issubclass(cls, SelfDistillation) and issubclass(cls, LoccaObjective)
  assert start_step(_config()) == 5
  sigmoid = load_config(os.path.join(REPO, "configs", "siglip2.py") + ":demo,sigmoid")
  assert objective_class(sigmoid) is ContrastiveObjective  # the ablations stay without it
  sigmoid.ema.decay = 0.99
  sigmoid.model.image.ssl_head = {"prototypes": 16, "hidden": 16, "bottleneck": 8}
  sigmoid.self_distillation.masked_weight = 0.25
  cls = objective_class(sigmoid)
  assert issubclass(cls, SelfDistillation) and issubclass(cls, ContrastiveObjective)
  assert not issubclass(cls, LoccaObjective)


def test_batch_carries_the_local_views(demo):
  _, _, batch = demo
  views = batch["local_images"]
  assert views.shape == (16, 4, 16, 16, 3) and views.dtype == np.uint8
  assert len(views.sharding.device_set) == 8  # split over the batch like the images


def test_before_the_start_the_terms_are_zero_and_the_gradient_is_the_objectives(demo):
  setup, state, batch = demo
  objective = objective_class(setup.config)(setup)
  loss, m, grads = _value_and_grad(setup, objective, state, batch, step=4)
  for term in TERMS:
    assert m[term] == 0.0, term
  base_loss, base_m, base_grads = _value_and_grad(setup, LoccaObjective(setup), state, batch, step=4)
  np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
  for (path, g), b in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(base_grads), strict=True
  ):
    np.testing.assert_allclose(g, b, rtol=1e-5, atol=1e-8, err_msg=jax.tree_util.keystr(path))
  assert not np.abs(grads["image"]["ssl_global"]["prototypes"]["kernel"]).any()


def test_after_the_start_both_terms_train_the_heads(demo):
  setup, state, batch = demo
  objective = objective_class(setup.config)(setup)
  loss, m, grads = _value_and_grad(setup, objective, state, batch, step=5)
  sd, mp = m["self_distillation_loss"], m["masked_prediction_loss"]
  assert np.isfinite(sd) and sd > 0 and np.isfinite(mp) and mp > 0
  base = m["contrastive_loss"] + setup.config.loss.decoder_weight * m["decoder_loss"]
  np.testing.assert_allclose(loss, base + 1.0 * sd + 0.25 * mp, rtol=1e-5)
  image = grads["image"]
  for part in ("ssl_global", "ssl_patch"):
    assert np.abs(image[part]["prototypes"]["kernel"]).sum() > 0, part
  assert np.abs(image["mask_token"]).sum() > 0  # the masked view reads it
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_the_teacher_gets_no_gradient(demo):
  setup, state, batch = demo
  objective = objective_class(setup.config)(setup)
  inputs = objective.step_inputs(state.replace(step=jnp.asarray(7, state.step.dtype)), None)

  def total(ema):
    return objective.loss(state.params, batch, {**inputs, "ema": ema})[0]

  with S.activate(setup.mesh, setup.rules):
    g = jax.device_get(jax.jit(jax.grad(total))(state.ema))
  assert not any(np.abs(x).any() for x in jax.tree.leaves(g))


def test_masks_hold_the_ratio_of_patches():
  from vlpt.train.objectives.self_distillation import SelfDistillation

  obj = SelfDistillation.__new__(SelfDistillation)
  obj.mask_ratio = 0.5
  mask = np.asarray(obj.patch_mask(jax.random.key(0), 6, 64))
  assert (mask.sum(axis=1) == 32).all() and len({tuple(r) for r in mask}) == 6


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"ema.decay": 0.0}, "needs the EMA teacher: set config.ema.decay > 0"),
    ({"model.image.ssl_head": None}, "needs the heads"),
    ({"self_distillation.mask_ratio": 1.0}, "mask_ratio must be in"),
    ({"self_distillation.local_size": 18}, "local_size a multiple of the patch"),
    ({"self_distillation.weight": -1.0}, "weights must be >= 0"),
  ],
)
def test_config_errors_are_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message) as e:
    validate(_config(**overrides), num_devices=8)
  assert "\n" not in str(e.value)


def test_raw_parameters_of_a_self_distillation_run_can_be_evaluated():
  """The EMA-teacher error names the fix for ``vlpt-eval --config.ema.decay=0``, and the fix
  validates: the terms off, the EMA off."""
  with pytest.raises(ConfigError, match="--config.self_distillation.weight=0"):
    validate(_config(**{"ema.decay": 0.0}), num_devices=8)
  off = {"ema.decay": 0.0, "self_distillation.weight": 0.0, "self_distillation.masked_weight": 0.0}
  validate(_config(**off), num_devices=8)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_logs_the_terms_from_the_start(tmp_path):
  """10 steps of the demo (the stage from step 5): the terms are 0 in the logs before, positive
  after; the run's loss stays finite."""
  from vlpt.train.loop import train

  train(_config(), str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [r for r in map(json.loads, f) if "train/self_distillation_loss" in r]
  by_step = {r["step"]: r for r in rows}
  for step in (2, 4):  # steps 1-4 (state.step 0-3) and 3-4: before the start
    assert by_step[step]["train/self_distillation_loss"] == 0.0
    assert by_step[step]["train/masked_prediction_loss"] == 0.0
  for step in (8, 10):  # steps 7-10: after it
    assert by_step[step]["train/self_distillation_loss"] > 0
    assert by_step[step]["train/masked_prediction_loss"] > 0
    assert np.isfinite(by_step[step]["train/loss"])
