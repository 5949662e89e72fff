"""Bad configs fail fast: one actionable line on stderr, non-zero exit, no compilation."""

import subprocess
import time

import pytest

from conftest import PYTHON, REPO
from vlpt.config import default_config
from vlpt.errors import ConfigError
from vlpt.train.validation import validate

CASES = [
    (["--config.batch_size=30"], "not divisible by the data-parallel size 8"),
    (["--config.mesh.data=3"], "mesh"),
    (["--config.total_steps=0"], "config.total_steps must be a positive integer"),
    (["--config.total_steps=-5"], "config.total_steps must be a positive integer"),
    (["--config.data.train.source=wds:/no/such/shards.tar"], "does not exist"),
    (["--config.model.image.variant=B/7"], "not divisible by the patch size"),
    (["--config.loss.name=softmaxx"], "config.loss.name='softmaxx' is not one of"),
    (["--config.loss.impl=ring", "--config.loss.label_smoothing=0.1"], "needs impl='gather'"),
    (["--config.loss.matryoshka_dims=(8,1024)"], "exceeds config.model.embed_dim=128"),
    (["--config.loss.name=sigmoid"], "needs a logit bias"),
    (["--config.batch_sise=8"], "batch_sise"),  # unknown override key: absl rejects it
    # evaluation-dataset settings the entry leaves to the defaults can be overridden (and checked)
    (["--config.eval.datasets.heldout.caption_method=topk"], "must be greedy or beam"),
    (["--config.eval.datasets.extra.split=test"], "source is required"),  # a new, incomplete entry
    (["--config.eval.datasets.heldout.num_exmples=5"], "num_exmples"),
]


@pytest.mark.parametrize("overrides,message", CASES)
def test_cli_config_errors(tmp_path, cli_env, overrides, message):
  start = time.perf_counter()
  proc = subprocess.run([PYTHON, "-m", "vlpt.cli.train", "--config", f"{REPO}/configs/demo.py",
                         "--workdir", str(tmp_path / "w"), *overrides],
                        capture_output=True, text=True, env=cli_env, timeout=120, cwd=tmp_path)
  assert proc.returncode != 0
  err = [line for line in proc.stderr.splitlines() if line.strip()]
  assert any(message in line for line in err), proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert time.perf_counter() - start < 60
  assert not (tmp_path / "w" / "checkpoints").exists()  # nothing was started


def test_unknown_key_in_config_file_is_named():
  c = default_config()
  with c.unlocked():
    c.optimizer.weight_decy = 1e-3
  with pytest.raises(ConfigError, match=r"'config.optimizer.weight_decy' \(did you mean "
                                        r"optimizer.weight_decay\?\)"):
    validate(c, num_devices=8)


def test_mesh_must_match_devices():
  c = default_config()
  c.mesh.data, c.mesh.fsdp = 2, 2
  with pytest.raises(ConfigError, match="uses 4 devices but 8 are available"):
    validate(c, num_devices=8)
  c.mesh.data = -1
  assert validate(c, num_devices=8) == (4, 2, 1)


def test_image_size_mismatch():
  c = default_config()
  c.data.image_size = 64
  with pytest.raises(ConfigError, match="data.image_size=64 differs"):
    validate(c, num_devices=8)


def test_eval_dataset_settings_from_the_command_line():
  """--config.eval.datasets.NAME.KEY sets a default-valued setting, or adds a dataset."""
  from vlpt.cli.common import _apply_dataset_settings, _split_dataset_settings
  from vlpt.config import load_config
  config = load_config(f"{REPO}/configs/demo.py:coca")
  config.lock()
  argv = ["vlpt-eval", "--config", "x.py", "--config.eval.datasets.heldout.caption_method=beam",
          "--config.eval.datasets.heldout.num_beams=3", "--config.eval.datasets.heldout.split=test",
          "--config.eval.datasets.heldout.tasks=('captioning',)", "--config.total_steps=5",
          "--config.eval.datasets.pets.source=tfds:oxford_iiit_pet",
          "--config.eval.datasets.pets.templates=None",
          "--config.eval.datasets.extra.source=synthetic",
          "--config.eval.datasets.extra.tasks=zeroshot,retrieval"]
  rest, held = _split_dataset_settings(argv)
  assert rest == ["vlpt-eval", "--config", "x.py", "--config.total_steps=5"]
  _apply_dataset_settings(config, held)
  heldout, pets = config.eval.datasets.heldout, config.eval.datasets.pets
  assert (heldout.caption_method, heldout.num_beams, heldout.split) == ("beam", 3, "test")
  assert heldout.tasks == ("captioning",) and heldout.num_examples == 1024
  assert pets.source == "tfds:oxford_iiit_pet" and pets.templates is None
  assert config.eval.datasets.extra.tasks == ("zeroshot", "retrieval")  # a bare list of words
  validate(config, num_devices=8)
