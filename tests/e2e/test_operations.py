"""Operations: SIGTERM checkpoints and exits 0, non-finite steps are skipped, dead peers fail fast."""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from vlpt.config import load_config

from conftest import REPO
from e2e_utils import (
  LONG_OVERRIDES,
  cli,
  env_with_devices,
  launch,
  metrics,
  one_train_step,
  run,
  same_topology_reference,
  train_losses,
)

OVERRIDES = LONG_OVERRIDES  # 80 steps: the shared reference run's


def _logged_step(workdir):
  try:
    return max((r["step"] for r in metrics(workdir) if "train/loss" in r), default=0)
  except (FileNotFoundError, ValueError):
    return 0


def _signal_at_some_step(command, env, workdir, min_step, signum=signal.SIGTERM):
  """Starts training; signals it once it logged ``min_step``; returns (proc, seconds, step)."""
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and _logged_step(workdir) < min_step:
    time.sleep(0.05)
  assert proc.poll() is None, proc.stdout.read()
  signaled_step = _logged_step(workdir)
  start = time.time()
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=60)
  return proc, time.time() - start, signaled_step, out


@pytest.mark.parametrize(
  "processes,signum",
  [
    (1, signal.SIGINT),  # Ctrl-C behaves as SIGTERM (the same handler; SIGTERM in the slow tier)
    pytest.param(1, signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param(2, signal.SIGTERM, marks=pytest.mark.slow),
  ],
)
def test_stop_signal_checkpoints_exits_zero_and_resumes_bitwise(
  tmp_path, cli_env, processes, signum, reference_run
):
  env = env_with_devices(cli_env, 8)

  command_for, want = same_topology_reference(processes, reference_run, env, tmp_path)
  workdir = tmp_path / "preempted"
  command = command_for(workdir)
  proc, seconds, step, out = _signal_at_some_step(command, env, workdir, 8, signum)
  assert proc.returncode == 0, out
  assert seconds < 30 and "Traceback" not in out
  saved = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
  assert step <= saved < 80 and f"{reason}: checkpointed step" in out
  out = run(command, env).stdout
  assert "resumed from" in out
  got = train_losses(workdir)
  assert sorted(got) == sorted(want) and _each_step_once(workdir) == sorted(want)
  for s in range(saved + 1, 81):
    assert got[s] == want[s], (s, got[s], want[s])  # bitwise


def _start_and_wait_for_step(command, env, workdir, min_step):
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and _logged_step(workdir) < min_step:
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()
  return proc


def _each_step_once(workdir):
  steps = [r["step"] for r in metrics(workdir) if "train/loss" in r]
  assert steps == sorted(set(steps)), "a step was logged twice"
  return steps


def test_second_ctrl_c_exits_at_once_and_the_rerun_resumes(tmp_path, cli_env, reference_run):
  """A second Ctrl-C exits 130 at once, without a checkpoint of its step; the last complete
  checkpoint stays the latest, the rerun ends with the reference's losses, each step logged once."""
  env = env_with_devices(cli_env, 8)
  want = train_losses(reference_run("short"))
  workdir = tmp_path / "run"
  overrides = ("--config.eval.at_end=False",)  # (configs/demo.py:tiny: checkpoints at 10 and 20)
  err_path = tmp_path / "stderr.txt"
  with open(err_path, "w") as err_file:
    proc = subprocess.Popen(
      cli("vlpt.cli.train", workdir, *overrides),
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=err_file,
      text=True,
    )
    deadline = time.time() + 240
    while (
      time.time() < deadline
      and proc.poll() is None
      and not (_logged_step(workdir) >= 12 and (workdir / "checkpoints" / "10").is_dir())
    ):
      time.sleep(0.02)  # (step 10's asynchronous save is renamed into place when complete)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and "Ctrl-C: checkpointing" not in err_path.read_text():
      time.sleep(0.005)  # the first one was handled: the second is not merged into it
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
  err = err_path.read_text()
  assert proc.returncode == 130, err
  assert "second Ctrl-C: exiting now" in err and "Traceback" not in err
  out = run(cli("vlpt.cli.train", workdir, *overrides), env).stdout
  assert "resumed from" in out
  got = train_losses(workdir)
  assert _each_step_once(workdir) == list(range(1, 21))
  assert all(got[s] == want[s] for s in range(11, 21))  # bitwise, after the checkpoint


def test_nonfinite_step_is_skipped_and_counted():
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.debug_nonfinite_steps = (1,)
  _, before, _, after, m = one_train_step(config)
  assert m["skipped_nonfinite"] == 1.0 and int(after.step) == 1
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_consecutive_nonfinite_steps_stop_the_run_and_resume_works(tmp_path, cli_env):
  env = env_with_devices(cli_env, 8)
  workdir = tmp_path / "run"
  poisoned = [
    "--config.total_steps=12",
    "--config.checkpoint_every_steps=4",
    "--config.eval.at_end=False",
    "--config.debug_nonfinite_steps=(3,6,7,8)",
    "--config.max_consecutive_nonfinite=3",
  ]
  out = subprocess.run(
    cli("vlpt.cli.train", workdir, *poisoned), env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 1, out.stderr
  assert "3 consecutive training steps" in out.stderr and "step 8" in out.stderr
  rows = {r["step"]: r for r in metrics(workdir) if "train/skipped_nonfinite" in r}
  assert rows[3]["train/skipped_nonfinite"] == 1 and rows[2]["train/skipped_nonfinite"] == 0
  assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [4]
  # the last good checkpoint resumes (the poison is a debug key: free to drop)
  fixed = [a for a in poisoned if "nonfinite" not in a]
  out = run(cli("vlpt.cli.train", workdir, *fixed), env).stdout
  assert "resumed from" in out and max(train_losses(workdir)) == 12


def _children(pid):
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
      except (OSError, IndexError, ValueError):
        pass
  return out


def test_kill_9_of_one_process_fails_the_job_fast(tmp_path, cli_env):
  env = env_with_devices(cli_env, 8)
  workdir = tmp_path / "run"
  command = launch(
    2,
    cli(
      "vlpt.cli.train",
      workdir,
      "--config.total_steps=100000",
      "--config.eval.at_end=False",
      "--config.eval_every_steps=100000",
      "--config.checkpoint_every_steps=100000",
    ),
  )
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and _logged_step(workdir) < 3:
    time.sleep(0.1)
  workers = _children(proc.pid)
  assert len(workers) == 2
  os.kill(workers[1], signal.SIGKILL)
  start = time.time()
  proc.communicate(timeout=90)
  assert proc.returncode != 0
  assert time.time() - start < 60
  for pid in workers:
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
