"""End to end on the tiny demo: exact resume, topology independence, cross-topology restore."""

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from conftest import PYTHON
from e2e_utils import (
  LONG_OVERRIDES,
  cli,
  env_with_devices,
  eval_rows,
  kill_after_checkpoint,
  launch,
  metrics,
  run,
  train_losses,
)


def _copy(reference, tmp_path):
  shutil.copytree(reference, tmp_path / "run")
  return tmp_path / "run"


def test_train_writes_metrics_checkpoints_and_tensorboard(tmp_path, cli_env, reference_run):
  workdir = _copy(reference_run("short"), tmp_path)
  stdout = (reference_run("short").parent / "stdout.txt").read_text()
  record = json.loads((workdir / "vlpt_run.json").read_text())
  assert record["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and record["packages"]["jax"]
  assert "step     20/20" in stdout and "ex/s" in stdout and "ETA" in stdout
  rows = metrics(workdir)
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 21))
  evals = eval_rows(workdir)
  assert len(evals) == 1 and evals[0]["step"] == 20
  for key in (
    "zeroshot/top1",
    "zeroshot/top5",
    "zeroshot/mean_per_class_recall",
    "retrieval/t2i_r1",
    "retrieval/t2i_r5",
    "retrieval/i2t_r1",
    "retrieval/i2t_r5",
  ):
    assert f"heldout/{key}" in evals[0]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  losses = train_losses(workdir)
  assert all(np.isfinite(v) for v in losses.values())

  # vlpt-eval reproduces the training-time evaluation of the last checkpoint.
  # a config whose model does not fit the checkpoint: one line naming the first parameter
  refused = subprocess.run(
    cli("vlpt.cli.eval", workdir, "--config.model.embed_dim=48"),
    env=env_with_devices(cli_env, 8),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
  assert "parameter image/proj/kernel is (64, 32) there and (64, 48) in this config" in refused.stderr
  # (without --config: the run's recorded vlpt_config.json)
  command = [PYTHON, "-m", "vlpt.cli.eval", "--workdir", str(workdir)]
  proc = run(command, env_with_devices(cli_env, 8))
  assert f"config: {workdir / 'vlpt_config.json'}" in proc.stderr
  again = eval_rows(workdir)[-1]
  assert again["step"] == 20
  for key, value in evals[0].items():
    if key != "step" and value is not None:
      assert again[key] == pytest.approx(value, abs=1e-6), key

  # Training a finished run again trains nothing, writes nothing, returns its final evaluation.
  proc = run(cli("vlpt.cli.train", workdir), env_with_devices(cli_env, 8))
  assert "nothing to train" in proc.stdout and "ex/s" not in proc.stdout
  assert metrics(workdir) == rows + [again]
  from vlpt.config import load_config
  from vlpt.train import train

  from e2e_utils import DEMO

  returned = train(load_config(DEMO + ":tiny"), str(workdir))
  assert returned == {k: v for k, v in again.items() if k != "step"}


def test_exact_resume_after_sigkill(tmp_path, cli_env, reference_run):
  env = env_with_devices(cli_env, 8)
  overrides = LONG_OVERRIDES
  want = train_losses(reference_run("long"))

  interrupted = tmp_path / "interrupted"
  proc = kill_after_checkpoint(
    cli("vlpt.cli.train", interrupted, *overrides), env, interrupted, min_step=10
  )
  assert proc.returncode == -signal.SIGKILL
  before = train_losses(interrupted)
  resumed_from = max(int(d) for d in os.listdir(interrupted / "checkpoints") if d.isdigit())
  assert resumed_from < 80, "the run finished before it could be killed"
  out = run(cli("vlpt.cli.train", interrupted, *overrides), env).stdout
  assert "resumed from" in out
  got = train_losses(interrupted)
  assert set(got) == set(want)
  for step in range(resumed_from + 1, 81):
    assert got[step] == want[step], (step, got[step], want[step])  # bitwise
  assert len(before) >= resumed_from


@pytest.mark.parametrize("kind", ["1 device", "2 processes x 4 devices"])
def test_topology_independence(tmp_path, cli_env, kind, reference_run):
  overrides = ["--config.eval.at_end=False", "--config.eval_every_steps=1000"]
  eight = reference_run("short")  # (evaluation does not change the losses)
  other = tmp_path / "other"
  command = cli("vlpt.cli.train", other, *overrides)
  if kind == "1 device":
    run(command, env_with_devices(cli_env, 1))
  else:
    run(launch(2, command), env_with_devices(cli_env, 8))
  a, b = train_losses(eight), train_losses(other)
  assert sorted(a) == sorted(b) == list(range(1, 21))
  np.testing.assert_allclose(
    [b[s] for s in range(1, 21)], [a[s] for s in range(1, 21)], atol=1e-5, rtol=0
  )


def test_checkpoint_restores_on_other_topologies(tmp_path, cli_env, reference_run):
  workdir = _copy(reference_run("short"), tmp_path)
  want = eval_rows(workdir)[-1]
  run(cli("vlpt.cli.eval", workdir), env_with_devices(cli_env, 1))
  run(launch(2, cli("vlpt.cli.eval", workdir)), env_with_devices(cli_env, 8))
  rows = eval_rows(workdir)
  assert len(rows) == 3
  for got in rows[1:]:
    assert got["step"] == 20
    for key, value in want.items():
      if key != "step" and value is not None:
        assert got[key] == pytest.approx(value, abs=1e-5), key
  # Training resumes on 2 processes x 4 devices from the 8-device checkpoint. A longer schedule or
  # another batch size is a config change: refused unless allowed; operational keys change freely.
  refused = subprocess.run(
    cli("vlpt.cli.train", workdir, "--config.total_steps=25", "--config.batch_size=64"),
    env=env_with_devices(cli_env, 8),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert refused.returncode == 2, refused.stderr
  assert "config.batch_size: 32 -> 64" in refused.stderr and "--allow_config_change" in refused.stderr
  assert "config.total_steps: 20 -> 25" in refused.stderr
  out = run(
    launch(
      2,
      cli(
        "vlpt.cli.train",
        workdir,
        "--config.total_steps=25",
        "--allow_config_change",
        "--config.log_every_steps=5",
      ),
    ),
    env_with_devices(cli_env, 8),
  ).stdout
  assert "resumed from" in out and "changed config (allowed): config.total_steps: 20 -> 25" in out
  assert "log_every_steps" not in out.split("changed config (allowed)")[1].splitlines()[0]
  assert max(train_losses(workdir)) == 25


def test_ring_loss_trains_like_the_gather_loss(tmp_path, cli_env, reference_run):
  env = env_with_devices(cli_env, 8)
  overrides = ["--config.eval.at_end=False", "--config.eval_every_steps=1000"]
  run(
    cli(
      "vlpt.cli.train",
      tmp_path / "ring",
      *overrides,
      "--config.loss.impl=ring",
      "--config.loss.tile_size=2",
      # the gather loss's f32 matmuls (the default bf16 tiles: tests/losses/test_ring_numerics.py)
      "--config.loss.precision=highest",
    ),
    env,
  )
  a, b = train_losses(reference_run("short")), train_losses(tmp_path / "ring")
  np.testing.assert_allclose(
    [b[s] for s in range(1, 21)], [a[s] for s in range(1, 21)], atol=1e-5, rtol=0
  )
