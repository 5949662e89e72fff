"""What the loop reports is right: the learning rate after skipped steps, the data skip counts of
every process, and a mesh the processes cannot feed is refused before anything compiles."""

import os
import subprocess

import jax
import orbax.checkpoint as ocp
import pytest

from vlpt.config import load_config
from vlpt.optim import learning_rate_schedule
from vlpt.train import loop

from conftest import REPO
from e2e_utils import broken_shards, cli, env_with_devices, launch, metrics, run


def test_logged_learning_rate_is_the_applied_one_after_skipped_steps(tmp_path):
  """A skipped step applies no update, so optax's count (which the schedule reads) falls behind
  the step; the logged rate follows the count."""
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.total_steps, config.checkpoint_every_steps = 8, 8
  config.eval.at_end, config.eval_every_steps = False, 1000
  config.debug_nonfinite_steps = (3, 4)
  loop.train(config, str(tmp_path))
  schedule = learning_rate_schedule(config)
  rows = {r["step"]: r for r in metrics(tmp_path) if "train/learning_rate" in r}
  applied = 0  # updates applied before each step
  for step in range(1, 9):
    assert rows[step]["train/learning_rate"] == pytest.approx(float(schedule(applied)), rel=1e-6)
    assert rows[step]["train/skipped_nonfinite"] == (step in (3, 4))
    applied += step not in (3, 4)
  # (the warmup makes the two schedules differ: schedule(step - 1) is not what was logged)
  assert float(schedule(7)) != pytest.approx(rows[8]["train/learning_rate"])
  restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "8" / "state")
  leaves = jax.tree_util.tree_leaves_with_path(restored["opt_state"])
  counts = {int(v) for path, v in leaves if jax.tree_util.keystr(path).endswith("count']")}
  assert counts == {6}  # 8 steps, 2 skipped


def test_data_skip_counts_are_summed_over_processes(tmp_path, cli_env):
  """Two processes, each reading half of every global batch, log the same totals as one."""
  pattern = broken_shards(tmp_path / "shards")
  flags = (
    f"--config.data.train.source=wds:{pattern}",
    "--config.total_steps=6",
    "--config.log_every_steps=3",
    "--config.checkpoint_every_steps=100",
    "--config.eval.at_end=False",
  )
  env = env_with_devices(cli_env, 8)
  run(cli("vlpt.cli.train", tmp_path / "one", *flags), env)
  run(launch(2, cli("vlpt.cli.train", tmp_path / "two", *flags)), env)

  def skips(workdir):
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("data/")} for r in metrics(workdir)}

  one, two = skips(tmp_path / "one"), skips(tmp_path / "two")
  assert sorted(two) == [3, 6] and two == one
  assert two[6]["data/skipped_undecodable_image"] >= 3 and two[6]["data/skipped_empty_caption"] >= 2


def test_a_mesh_the_processes_cannot_feed_is_one_line_before_compiling(tmp_path, cli_env):
  """data x fsdp = 1 batch shard over 2 processes: each would feed rows of one shard."""
  command = cli("vlpt.cli.train", tmp_path / "w", "--config.mesh.data=1", "--config.mesh.tensor=8")
  proc = subprocess.run(
    launch(2, command), env=env_with_devices(cli_env, 8), capture_output=True, text=True, timeout=180
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert (
    "vlpt: error: the mesh's data x fsdp = 1 x 1 = 1 batch shards do not split over 2" in proc.stderr
  )
  assert "Traceback" not in proc.stderr and not (tmp_path / "w" / "checkpoints").exists()
