"""Each loss trains the demo to zero-shot accuracy far above chance (slow tier)."""

import math

import pytest

from e2e_utils import DEMO, cli, env_with_devices, eval_rows, run

LOSSES = {
  "softmax": [],
  "sigmoid": [f"--config.model.init_logit_scale={math.log(10)}", "--config.model.init_logit_bias=-10.0"],
  "infoloob": [],
  "dcl": [],
  "softmax_ring": ["--config.loss.impl=ring", "--config.loss.tile_size=32"],
  "softmax_matryoshka": ["--config.loss.matryoshka_dims=(32,64,128)"],
  "clip_align_uniform": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_trains_demo(tmp_path, cli_env, name):
  loss = name if name in ("clip_align_uniform",) else name.split("_")[0]
  overrides = [
    f"--config.loss.name={loss}",
    "--config.total_steps=600",
    "--config.eval_every_steps=600",
    "--config.checkpoint_every_steps=600",
    *LOSSES[name],
  ]
  run(
    cli("vlpt.cli.train", tmp_path, *overrides, config=DEMO), env_with_devices(cli_env, 8), timeout=900
  )
  top1 = eval_rows(tmp_path)[-1]["heldout/zeroshot/top1"]
  assert top1 > 0.25, top1  # chance is 1/24


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
  """A CLIP trained briefly on the demo: any vlpt.load source can teach (here a workdir)."""
  import os

  from conftest import REPO

  workdir = tmp_path_factory.mktemp("teacher")
  env = dict(
    os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu"
  )
  run(
    cli(
      "vlpt.cli.train",
      workdir,
      "--config.total_steps=300",
      "--config.eval.at_end=False",
      "--config.checkpoint_every_steps=300",
      config=DEMO,
    ),
    env_with_devices(env, 8),
    timeout=900,
  )
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["distill", "cwcl"])
def test_teacher_loss_trains_demo(tmp_path, cli_env, teacher_workdir, loss):
  overrides = [
    f"--config.loss.name={loss}",
    f"--config.teacher.checkpoint={teacher_workdir}",
    "--config.total_steps=600",
    "--config.eval_every_steps=600",
    "--config.checkpoint_every_steps=600",
  ]
  run(
    cli("vlpt.cli.train", tmp_path, *overrides, config=DEMO), env_with_devices(cli_env, 8), timeout=900
  )
  top1 = eval_rows(tmp_path)[-1]["heldout/zeroshot/top1"]
  assert top1 > 0.25, top1  # chance is 1/24
