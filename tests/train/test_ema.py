"""EMA weights (config.ema.decay): the update rule against numpy, their shardings, validation, and
checkpoints saved and restored with and without them (in-process, on the tiny demo)."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from e2e_utils import DEMO


def _config(**overrides):
  from vlpt.config import load_config

  c = load_config(DEMO + ":tiny")
  c.eval.datasets = {}
  c.ema.decay = 0.9
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def _run(config, steps):
  """The host copies of the state before and after each of ``steps`` jitted steps."""
  from vlpt import sharding as S
  from vlpt.train.loop import make_loader
  from vlpt.train.objectives import objective_class
  from vlpt.train.setup import build, initial_state
  from vlpt.train.step import make_train_step

  setup = build(config)
  state = initial_state(setup)
  loader = make_loader(setup)
  step = make_train_step(setup, objective_class(config)(setup))
  states = [jax.device_get(state)]
  with S.activate(setup.mesh, setup.rules):
    for _ in range(steps):
      state, _ = step(state, next(loader))
      states.append(jax.device_get(state))
  loader.close()
  return states


def test_update_matches_numpy_and_skips_nonfinite_steps():
  decay = 0.8
  states = _run(_config(**{"ema.decay": decay, "debug_nonfinite_steps": (3,)}), 4)
  d = np.float32(decay)
  ema = jax.tree.map(lambda p: np.asarray(p, np.float32), states[0].params)
  jax.tree.map(lambda e, p: np.testing.assert_array_equal(e, p), states[0].ema, ema)
  for t in range(1, 5):
    before, after = states[t - 1], states[t]
    if t == 3:  # the poisoned step: params and EMA both unchanged, bit for bit
      jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
      jax.tree.map(np.testing.assert_array_equal, after.ema, before.ema)
      continue
    ema = jax.tree.map(lambda e, p: d * e + (np.float32(1) - d) * np.float32(p), ema, after.params)
    jax.tree.map(
      lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7), after.ema, ema
    )
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(after.ema))
  # the EMA lags the parameters: it moved, but not as far
  moved = jax.tree.leaves(
    jax.tree.map(lambda a, b: np.abs(a - b).max(), states[4].params, states[0].params)
  )
  lag = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), states[4].ema, states[4].params))
  assert max(moved) > 0 and 0 < max(lag) < max(moved)


def test_locked_tower_ema_is_its_parameters():
  config = _config(**{"init.lock_towers": ("image",), "init.allow_random_lock": True})
  states = _run(config, 2)
  jax.tree.map(np.testing.assert_array_equal, states[-1].ema["image"], states[-1].params["image"])
  jax.tree.map(np.testing.assert_array_equal, states[-1].params["image"], states[0].params["image"])
  assert not np.array_equal(
    states[-1].ema["text"]["proj"]["kernel"], states[0].ema["text"]["proj"]["kernel"]
  )


def test_ema_sharded_like_the_parameters():
  from vlpt.train.setup import build, initial_state

  setup = build(_config(**{"mesh.data": 2, "mesh.fsdp": 4}))
  assert setup.state_shardings.ema == setup.state_shardings.params
  sharded = [a.sharding for a in jax.tree.leaves(setup.abstract_state.params)]
  assert any(not s.is_fully_replicated for s in sharded)  # (the test means something)
  assert [a.sharding for a in jax.tree.leaves(setup.abstract_state.ema)] == sharded
  assert {a.dtype for a in jax.tree.leaves(setup.abstract_state.ema)} == {np.dtype(np.float32)}
  state = initial_state(setup)
  for e, p in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params), strict=True):
    assert e.sharding == p.sharding
    np.testing.assert_array_equal(np.asarray(e), np.asarray(p))
  off = build(_config(**{"ema.decay": 0.0}))
  assert off.abstract_state.ema is None and off.state_shardings.ema is None


@pytest.mark.parametrize("decay", [1.0, -0.1, 2, "0.9", True, None])
def test_decay_outside_the_unit_interval_is_one_line(decay):
  from vlpt.errors import ConfigError
  from vlpt.train.validation import validate

  c = _config()
  c.ema = ml_collections.ConfigDict({"decay": decay})
  with pytest.raises(ConfigError) as e:
    validate(c, num_devices=8)
  assert str(e.value).startswith("config.ema.decay=") and "must be a number in [0, 1)" in str(e.value)
  assert "\n" not in str(e.value)


def test_checkpoints_with_and_without_ema_restore_both_ways(tmp_path, capsys):
  """A checkpoint without EMA under a config with it: the EMA starts from its parameters (one
  line); with EMA under a config without it: not restored (one line); a checkpoint of an older
  vlpt, with no ema entry at all, restores too."""
  import orbax.checkpoint as ocp

  from vlpt.train.checkpointing import FIELDS, Checkpointer
  from vlpt.train.loop import make_loader
  from vlpt.train.setup import build, initial_state

  on, off = build(_config()), build(_config(**{"ema.decay": 0.0}))
  with_ema, without = initial_state(on), initial_state(off)
  with_ema = with_ema.replace(ema=jax.tree.map(lambda e: e + 1, with_ema.ema))  # (tell them apart)
  ckpt = Checkpointer(str(tmp_path), keep=5, async_save=False)
  loader = make_loader(on)
  ckpt.save(1, with_ema, loader, force=True)
  ckpt.save(2, without, loader, force=True)
  old = {name: getattr(without, name) for name in FIELDS}
  ckpt._manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(old)), force=True)
  loader.close()
  ckpt.wait()
  assert ckpt.has_ema(1) and not ckpt.has_ema(2) and not ckpt.has_ema(3)

  same = ckpt.restore(1, on.abstract_state, None)  # the EMA comes back as saved
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(same.ema), jax.device_get(with_ema.ema))
  dropped = ckpt.restore(1, off.abstract_state, None)
  assert dropped.ema is None
  assert "holds EMA weights; config.ema.decay=0, so they are not restored" in capsys.readouterr().out
  for step in (2, 3):
    started = ckpt.restore(step, on.abstract_state, None)
    assert "holds no EMA weights: the EMA (config.ema.decay) starts from its parameters" in (
      capsys.readouterr().out
    )
    for e, p in zip(jax.tree.leaves(started.ema), jax.tree.leaves(started.params), strict=True):
      assert e.sharding == p.sharding and e.dtype == np.float32
      np.testing.assert_array_equal(np.asarray(e), np.asarray(p))
    assert ckpt.restore(step, off.abstract_state, None).ema is None
  ckpt.close()
  # read to the host as a model: the EMA weights, or the parameters (a new reader, as vlpt.load's)
  ckpt = Checkpointer(str(tmp_path), keep=5, async_save=False)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), on.abstract_state.params)
  host = ckpt.restore_params(1, abstract, part="ema")
  jax.tree.map(np.testing.assert_array_equal, host, jax.device_get(with_ema.ema))
  raw = ckpt.restore_params(1, abstract)
  jax.tree.map(np.testing.assert_array_equal, raw, jax.device_get(with_ema.params))
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "3"]
