"""Chaos: a 2-process run killed with SIGKILL (every process at once, as when a slice is lost) at
random moments, some in the middle of an asynchronous checkpoint write, and restarted each time,
ends with the loss curve of a run never interrupted, bitwise; every restart resumes from the
newest complete checkpoint; the same with the workdir on a GCS server; and a run restarted on
another number of processes (2 -> 1 -> 4) follows the same curve within 1e-5.

The kills, restarts and recomputed steps are printed (``-s``) for docs/operations.md.
"""

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from vlpt import storage

from e2e_utils import cli, launch

pytestmark = pytest.mark.slow

TOTAL_STEPS = 80
OVERRIDES = (
  f"--config.total_steps={TOTAL_STEPS}",
  "--config.checkpoint_every_steps=4",
  "--config.keep_checkpoints=3",
  "--config.log_every_steps=1",
  "--config.async_checkpointing=True",
  "--config.eval.at_end=False",
  "--config.eval_every_steps=100000",
)
KILLS = 10


def _command(workdir, processes):
  return launch(processes, cli("vlpt.cli.train", workdir, *OVERRIDES))


def _losses(workdir):
  """step -> train/loss in the workdir's metrics.jsonl (local or gs://)."""
  path = storage.join(workdir, "metrics.jsonl")
  if not storage.exists(path):
    return {}
  rows = []
  for line in storage.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:  # a torn last line
      pass
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _checkpoints(workdir):
  """(complete steps, names of unfinished saves) in WORKDIR/checkpoints, as orbax sees them (a
  killed save's leftovers stay among the unfinished). Listed fresh: a cached GCS listing would
  hide the running job's new entries."""
  from etils import epath
  from orbax.checkpoint._src.path import step as orbax_step

  directory = storage.join(workdir, "checkpoints")
  complete, unfinished = [], set()
  for name in storage.listdir(directory):
    path = storage.join(directory, name)
    if storage.is_remote(path):  # (on GCS orbax marks a finished step with this file, read fresh)
      finalized = name.isdigit() and storage.exists(storage.join(path, "commit_success.txt"))
    else:  # (a temporary directory renamed when complete)
      finalized = name.isdigit() and not orbax_step.is_tmp_checkpoint(epath.Path(path))
    if finalized:
      complete.append(int(name))
    elif name.isdigit() or orbax_step.is_tmp_checkpoint(epath.Path(path)):
      unfinished.add(name)
  return sorted(complete), unfinished


def _start(command, env, log):
  return subprocess.Popen(
    command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
  )


def _kill(proc):
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)


def _wait(proc, condition, timeout=600):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      return False
    if condition():
      return True
    time.sleep(0.02)
  raise AssertionError("the run made no progress in time")


def _resumed_step(text):
  found = re.findall(r"resumed from \S+/checkpoints/(\d+)", text)
  return int(found[-1]) if found else 0


def _logged_steps(text):
  return [int(n) for n in re.findall(r"\[vlpt\] step\s+(\d+)/", text)]


def _chaos(workdir, env, log_path, seed):
  """Kills and restarts the 2-process run until KILLS kills, then lets it finish; returns
  (kills, recomputed steps, seconds, kills during a checkpoint write)."""
  rng = random.Random(seed)
  kills = recomputed = during_write = 0
  start = time.time()
  log_path.write_text("")
  while True:
    complete_before, leftovers = _checkpoints(workdir)
    resume = complete_before[-1] if complete_before else 0
    offset = log_path.stat().st_size

    def life(offset=offset):  # this life's output
      with open(log_path) as f:
        f.seek(offset)
        return f.read()

    with open(log_path, "a") as log:
      proc = _start(_command(workdir, 2), env, log)
    if kills < KILLS:
      if kills % 2 == 0:  # in the middle of an asynchronous checkpoint write
        hit = _wait(proc, lambda old=leftovers: bool(_checkpoints(workdir)[1] - old))
      else:  # at a random moment once this life has trained a step
        hit = _wait(proc, lambda: bool(_logged_steps(life())))
        time.sleep(rng.uniform(0, 1.5))
        hit = hit and proc.poll() is None
      if hit:
        writing = bool(_checkpoints(workdir)[1] - leftovers)
        _kill(proc)
        kills += 1
        during_write += writing
        newest = (_checkpoints(workdir)[0] or [0])[-1]
        recomputed += max(max(_logged_steps(life()), default=0) - newest, 0)
    if proc.poll() is None:
      assert proc.wait(timeout=900) == 0, life()[-3000:]
    text = life()
    # every life resumed from the newest checkpoint complete when it started: never a partial one
    assert _resumed_step(text) == resume, (resume, text[-3000:])
    if proc.returncode == 0:
      return kills, recomputed, time.time() - start, during_write
    assert proc.returncode == -signal.SIGKILL, text[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  from conftest import cli_environment

  workdir = tmp_path_factory.mktemp("chaos") / "uninterrupted"
  proc = subprocess.run(
    _command(workdir, 2), env=cli_environment(), capture_output=True, text=True, timeout=1800
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  losses = _losses(str(workdir))
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  return losses


def _report(name, kills, recomputed, seconds, during_write):
  print(
    f"\n[chaos] {name}: {kills} SIGKILLs survived ({during_write} during a checkpoint write), "
    f"{recomputed} steps recomputed, {seconds:.0f} s wall for {TOTAL_STEPS} steps"
  )


def test_kill_9_at_random_moments_resumes_bitwise(uninterrupted, tmp_path, cli_env):
  workdir = str(tmp_path / "run")
  kills, recomputed, seconds, during_write = _chaos(workdir, cli_env, tmp_path / "log", seed=0)
  _report("local disk", kills, recomputed, seconds, during_write)
  assert kills == KILLS and during_write >= 1
  assert _losses(workdir) == uninterrupted


def test_kill_9_with_the_workdir_on_gcs(uninterrupted, tmp_path, gcs_server):
  from conftest import cli_environment

  workdir = f"gs://{gcs_server.bucket()}/run"
  env = cli_environment()  # (with the server's environment, set when it started)
  kills, recomputed, seconds, during_write = _chaos(workdir, env, tmp_path / "log", seed=1)
  _report("gs:// workdir", kills, recomputed, seconds, during_write)
  assert kills == KILLS
  assert _losses(workdir) == uninterrupted
  assert not os.path.exists("gs:") and not (tmp_path / "gs:").exists()


def test_restarts_on_other_process_counts_follow_the_curve(uninterrupted, tmp_path, cli_env):
  workdir = str(tmp_path / "run")
  with open(tmp_path / "log", "w") as log:
    for processes, until in ((2, 24), (1, 52), (4, None)):
      proc = _start(_command(workdir, processes), cli_env, log)
      if until is None:
        assert proc.wait(timeout=900) == 0
        break
      assert _wait(proc, lambda u=until: (_checkpoints(workdir)[0] or [0])[-1] >= u)
      _kill(proc)
  text = (tmp_path / "log").read_text()
  assert "data position from the step" in text  # (a data state saved by 2 processes, read by 1)
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  worst = max(abs(losses[s] - uninterrupted[s]) for s in losses)
  print(f"\n[chaos] 2 -> 1 -> 4 processes: largest loss difference {worst:.2e}")
  assert worst <= 1e-5
