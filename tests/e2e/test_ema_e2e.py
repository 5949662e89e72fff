"""EMA weights end to end on the tiny demo: a SIGKILLed run resumes to bitwise the same EMA as an
uninterrupted one; evaluation and exports use the EMA (``--weights raw`` the parameters); a
checkpoint without EMA resumed under a config with it starts the EMA from its parameters."""

import os
import shutil
import signal

import numpy as np
import pytest

from conftest import PYTHON
from e2e_utils import cli, env_with_devices, eval_rows, kill_after_checkpoint, run

# decay 0.99 over 40 steps keeps about 0.99^40 = 2/3 of the initial weights in the average: far
# enough from the parameters that their evaluations differ
OVERRIDES = (
  "--config.total_steps=40",
  "--config.checkpoint_every_steps=10",
  "--config.eval_every_steps=1000",
  "--config.ema.decay=0.99",
)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  """The tiny demo with EMA, uninterrupted (evaluated at the end): shared, read-only."""
  workdir = tmp_path_factory.mktemp("ema") / "run"
  run(cli("vlpt.cli.train", workdir, *OVERRIDES), env_with_devices(_env(), 8))
  return workdir


def _env():
  from conftest import cli_environment

  return cli_environment()


def _saved(workdir, step, part):
  """The checkpoint's arrays of ``part`` ("params" or "ema") as orbax wrote them, '.'-joined."""
  import orbax.checkpoint as ocp

  tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for key, value in node.items():
        walk(value, f"{prefix}{key}.")
    else:
      out[prefix[:-1]] = np.asarray(node)

  walk(tree[part], "")
  return out


def _assert_same(got, want):
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)  # bitwise


@pytest.mark.slow
def test_ema_exact_resume_after_sigkill(tmp_path, cli_env, ema_run):
  env = env_with_devices(cli_env, 8)
  interrupted = tmp_path / "interrupted"
  command = cli("vlpt.cli.train", interrupted, *OVERRIDES)
  proc = kill_after_checkpoint(command, env, interrupted, min_step=10)
  assert proc.returncode == -signal.SIGKILL
  resumed_from = max(int(d) for d in os.listdir(interrupted / "checkpoints") if d.isdigit())
  assert resumed_from < 40, "the run finished before it could be killed"
  out = run(command, env).stdout
  assert "resumed from" in out and "EMA" not in out  # (restored, not started afresh)
  want_ema, got_ema = _saved(ema_run, 40, "ema"), _saved(interrupted, 40, "ema")
  _assert_same(got_ema, want_ema)
  _assert_same(_saved(interrupted, 40, "params"), _saved(ema_run, 40, "params"))
  raw = _saved(ema_run, 40, "params")
  assert any(not np.array_equal(raw[k], want_ema[k]) for k in raw)  # (the EMA is not the params)


@pytest.mark.slow
def test_eval_and_exports_use_the_ema(tmp_path, cli_env, ema_run):
  import vlpt
  from vlpt.weights.formats import read_bundle

  env = env_with_devices(cli_env, 8)
  workdir = tmp_path / "run"
  shutil.copytree(ema_run, workdir)
  at_end = eval_rows(workdir)[-1]  # the loop's final evaluation: the EMA's
  # vlpt-eval (the run's own config) evaluates the EMA too; with the EMA off, the parameters
  run([PYTHON, "-m", "vlpt.cli.eval", "--workdir", str(workdir)], env)
  raw_proc = run([PYTHON, "-m", "vlpt.cli.eval", "--workdir", str(workdir), "--config.ema.decay=0"], env)
  assert "holds EMA weights; config.ema.decay=0, so they are not restored" in raw_proc.stdout
  *_, ema_eval, raw_eval = eval_rows(workdir)
  assert ema_eval["step"] == raw_eval["step"] == 40
  keys = [k for k in at_end if k != "step" and at_end[k] is not None]
  assert keys and set(keys) <= set(raw_eval)  # (the same keys)
  for key in keys:
    assert ema_eval[key] == pytest.approx(at_end[key], abs=1e-6), key
  assert any(raw_eval[key] != pytest.approx(ema_eval[key], abs=1e-6) for key in keys), (
    raw_eval,
    ema_eval,
  )

  # vlpt-convert: the EMA by default, the parameters with --weights raw; vlpt.load likewise
  ema_ckpt, raw_ckpt = _saved(workdir, 40, "ema"), _saved(workdir, 40, "params")
  for flag, want in (((), ema_ckpt), (("--weights", "raw"), raw_ckpt)):
    dst = tmp_path / f"export{len(flag)}"
    out = run([PYTHON, "-m", "vlpt.cli.convert", str(workdir), str(dst), *flag], env).stdout
    assert ("(EMA weights)" if not flag else "(parameters)") in out
    _assert_same(read_bundle(str(dst)).params, want)
  _assert_same(vlpt.load(str(workdir)).bundle.params, ema_ckpt)
  _assert_same(vlpt.load(str(workdir), weights="raw").bundle.params, raw_ckpt)
  _assert_same(vlpt.load(str(workdir / "checkpoints" / "40")).bundle.params, ema_ckpt)


@pytest.mark.slow
def test_resume_without_ema_into_a_config_with_ema(tmp_path, cli_env, reference_run):
  """A run trained without EMA, resumed with it (a config change, so allowed explicitly): the EMA
  starts from the restored parameters, with one line, and is checkpointed from then on."""
  from vlpt.train.checkpointing import Checkpointer

  workdir = tmp_path / "run"
  shutil.copytree(reference_run("short"), workdir)  # 20 steps, no EMA
  extra = ("--config.total_steps=22", "--config.ema.decay=0.5", "--allow_config_change")
  out = run(cli("vlpt.cli.train", workdir, *extra), env_with_devices(cli_env, 8)).stdout
  assert (
    "checkpoints/20 holds no EMA weights: the EMA (config.ema.decay) starts from its parameters" in out
  )
  ckpt = Checkpointer(str(workdir), keep=5, async_save=False)
  assert ckpt.has_ema(22) and not ckpt.has_ema(20)
  ckpt.close()
  ema, params = _saved(workdir, 22, "ema"), _saved(workdir, 22, "params")
  before = _saved(workdir, 20, "params")
  # two steps of decay 0.5 from the step-20 parameters: ema = p20/4 + p21/4 + p22/2, between them
  for key in params:
    lo = np.minimum(before[key], params[key]) - 1e-3
    hi = np.maximum(before[key], params[key]) + 1e-3
    assert np.all((ema[key] >= lo) & (ema[key] <= hi)), key
  assert any(not np.array_equal(ema[k], params[k]) for k in params)
