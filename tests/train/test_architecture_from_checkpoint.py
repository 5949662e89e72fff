"""Fine-tuning a converted checkpoint from the command line: a config that does not describe it
is refused before anything compiles, naming the command that prints its architecture;
``config.init.architecture_from_checkpoint`` trains the checkpoint's own towers, tokenizer and
resolution, and the log says what was loaded from where."""

import json
import subprocess

import numpy as np
import pytest

from vlpt.config import default_config, load_config, overlay
from vlpt.errors import ConfigError
from vlpt.train.initialization import (
  architecture,
  check_checkpoint_fits,
  read_checkpoint,
  resolve_architecture,
)
from vlpt.train.setup import build

from e2e_utils import DEMO, cli, export_random_model, run

# a checkpoint of another architecture than configs/demo.py:tiny: wider towers, CLIP's BPE
# vocabulary (the demo trains a word tokenizer), another resolution
WIDER = {"image": {"variant": "micro/8", "width": 48}, "text": {"variant": "micro", "width": 48}}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """An HF export (as vlpt-convert writes one) of a model the demo config does not describe."""
  from vlpt.cli import convert

  root = tmp_path_factory.mktemp("converted")
  config = load_config(DEMO + ":tiny")
  config.data.tokenizer = {"name": "clip_bpe", "context_length": 16}
  config.data.image_size = 40
  with config.unlocked():
    config.model.image = WIDER["image"]
    config.model.text = WIDER["text"]
  export_random_model(config, root / "vlpt")
  assert convert.main([str(root / "vlpt"), str(root / "hf"), "--to", "hf"]) == 0
  return root / "hf"


def test_print_config_overlays_onto_a_config(converted):
  out = subprocess.run(
    ["vlpt-convert", str(converted), "--print-config"], capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr
  printed = json.loads(out.stdout)
  config = default_config()
  overlay(config, printed)  # (what a config file does with the printed JSON)
  config.init.checkpoint = str(converted)
  assert config.model.image.width == 48 and config.data.image_size == 40
  assert config.data.tokenizer.name == "hf" and config.data.normalization == "clip"
  assert config.model.decoder.to_dict() == {}  # the sections it does not print stay
  check_checkpoint_fits(build(config))  # fits: no error


def test_a_config_that_does_not_describe_the_checkpoint_names_the_fix(converted, tmp_path, cli_env):
  proc = subprocess.run(
    cli("vlpt.cli.train", tmp_path / "w", f"--config.init.checkpoint={converted}"),
    env=cli_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert "does not fit config.model" in last and f"vlpt-convert {converted} --print-config" in last
  assert "architecture_from_checkpoint=True" in last
  assert "Traceback" not in proc.stderr
  assert "parameters, mesh" not in proc.stdout  # refused before any state was built
  assert not list((tmp_path / "w").glob("checkpoints/*"))


def test_architecture_from_checkpoint_trains_the_checkpoints_model(converted, tmp_path, cli_env):
  workdir = tmp_path / "w"
  proc = run(
    cli(
      "vlpt.cli.train",
      workdir,
      f"--config.init.checkpoint={converted}",
      "--config.init.architecture_from_checkpoint=True",
      "--config.total_steps=2",
      "--config.optimizer.lr=0",  # (the weights stay the checkpoint's: compared below)
      "--config.optimizer.weight_decay=0",
      "--config.eval.at_end=False",
    ),
    cli_env,
  )
  out = proc.stdout + proc.stderr
  assert f"architecture from {converted} (hf): config.model, data.image_size, data.tokenizer" in out
  assert f"init: all parameters from {converted} (hf checkpoint" in out
  recorded = json.loads((workdir / "vlpt_config.json").read_text())
  assert recorded["model"]["image"]["width"] == 48 and recorded["data"]["image_size"] == 40
  assert recorded["data"]["tokenizer"]["name"] == "hf"
  source, trained = read_checkpoint(str(converted)), read_checkpoint(str(workdir))
  compute = ("attention", "dtype", "param_dtype")  # (how this run computes, not the architecture)
  assert {k: v for k, v in trained.model.items() if k not in compute} == source.model
  for name, value in source.params.items():
    np.testing.assert_array_equal(trained.params[name], value, err_msg=name)


def test_architecture_from_checkpoint_needs_a_whole_checkpoint(converted):
  config = load_config(DEMO + ":tiny")
  config.init.architecture_from_checkpoint = True
  with pytest.raises(ConfigError, match="needs config.init.checkpoint"):
    resolve_architecture(config)
  config.init.checkpoint = str(converted)
  config.init.towers = ("image",)
  with pytest.raises(ConfigError, match="takes the whole architecture"):
    resolve_architecture(config)


def test_architecture_keeps_what_the_checkpoint_does_not_name(converted):
  bundle = read_checkpoint(str(converted))
  bundle.tokenizer = None  # (a big_vision .npz names none)
  arch = architecture(bundle)
  assert "tokenizer" not in arch["data"] and arch["data"]["image_size"] == 40
  assert "image_size" not in arch["model"]["image"] and "vocab_size" not in arch["model"]["text"]


def test_training_only_parts_start_random_from_a_released_checkpoint(tmp_path, capsys):
  """SigLIP 2's self-distillation heads and mask token exist only in training: a checkpoint
  without them (any released SigLIP) initializes everything else and leaves them random."""
  import jax

  from vlpt.train.initialization import pretrained_params

  config = load_config("configs/siglip2.py:demo")  # heads + mask token in the image tower
  without = load_config("configs/siglip2.py:demo")
  with without.unlocked():
    without.model.image.ssl_head = None
  _, flat = export_random_model(without, tmp_path / "released")
  assert not any(k.startswith("image.ssl") or k == "image.mask_token" for k in flat)
  config.init.checkpoint = str(tmp_path / "released")
  setup = build(config)
  check_checkpoint_fits(setup)
  assert "training-only tensor(s) the checkpoint lacks" in capsys.readouterr().out
  params = jax.device_get(pretrained_params(setup))
  fresh = jax.device_get(setup.init_fn(jax.random.key_data(jax.random.key(config.seed))).params)
  np.testing.assert_array_equal(params["image"]["mask_token"], fresh["image"]["mask_token"])
  heads = jax.tree.leaves(params["image"]["ssl_patch"])
  assert len(heads) == 7
  for got, want in zip(heads, jax.tree.leaves(fresh["image"]["ssl_patch"])):
    np.testing.assert_allclose(got, want, atol=1e-7)  # the init under jit vs eagerly
  np.testing.assert_array_equal(  # the rest is the checkpoint's
    params["image"]["patch_embed"].reshape(-1), np.asarray(flat["image.patch_embed"]).reshape(-1)
  )
