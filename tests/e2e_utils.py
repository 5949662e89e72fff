"""Helpers for end-to-end tests that run the CLIs as subprocesses."""

import json
import os
import re
import subprocess

from conftest import PYTHON, REPO

DEMO = os.path.join(REPO, "configs", "demo.py")


def env_with_devices(base_env, devices):
  env = dict(base_env)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return env


def cli(module, workdir, *overrides, config=DEMO + ":tiny"):
  return [PYTHON, "-m", module, "--config", config, "--workdir", str(workdir), *overrides]


def launch(n, command):
  return [PYTHON, os.path.join(REPO, "launch", "local.py"), "-n", str(n), "--", *command]


def run(command, env, timeout=300):
  proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  """step -> train/loss, the last logged value for each step (a restart re-logs steps)."""
  return {row["step"]: row["train/loss"] for row in metrics(workdir) if "train/loss" in row}


def eval_rows(workdir):
  return [row for row in metrics(workdir) if any(k.endswith("zeroshot/top1") for k in row)]


def one_train_step(config, *, with_teacher=False):
  """Builds ``config`` and runs one jitted step on its first batch, in-process.

  Returns (setup, state before (host), batch (host), state after (host), computed metrics).
  """
  import jax

  from vlpt.train import trainer as T
  setup = T.build(config)
  state = T.initial_state(setup)
  before = jax.device_get(state)
  loader = T.make_loader(setup)
  batch = next(loader)
  loader.close()
  teacher = T.load_teacher(setup) if with_teacher else None
  with T.S.activate(setup.mesh, setup.rules):
    after, m = T.make_train_step(setup, teacher)(state, batch)
  return setup, before, jax.device_get(batch), jax.device_get(after), jax.device_get(m.compute())
