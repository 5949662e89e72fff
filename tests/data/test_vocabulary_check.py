"""Own captions with the demo-only word tokenizer stop the run before training, naming the fix."""

import subprocess

import numpy as np
import pytest
from PIL import Image

from vlpt.config import load_config
from vlpt.data.pipeline import check_vocabulary
from vlpt.data.tokenizers import build_tokenizer, unknown_fraction

from conftest import PYTHON
from e2e_utils import DEMO

CAPTIONS = ["a cat with orange fur", "two dogs on a beach", "a bowl of ramen", "red tulips"]


@pytest.fixture(scope="module")
def own_shards(tmp_path_factory):
  """vlpt-data build --from folder: photographs-like images with their own captions."""
  root = tmp_path_factory.mktemp("own")
  folder = root / "photos"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(24):
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
  out = subprocess.run(
    [
      PYTHON,
      "-m",
      "vlpt.cli.data",
      "build",
      "--from",
      "folder",
      str(folder),
      "--out",
      str(root / "shards"),
    ],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return "wds:" + out.split("wds:")[1].split()[0]


def test_word_tokenizer_on_own_captions_is_refused(own_shards):
  config = load_config(DEMO)
  config.data.train.source = own_shards
  word = build_tokenizer(config.data.tokenizer)
  assert unknown_fraction(word, CAPTIONS) == 1.0
  with pytest.raises(
    ValueError, match=r"maps 100% of 24 sampled captions .* word tokenizer is demo-only"
  ):
    check_vocabulary(config.data, word)
  config.data.tokenizer = {"name": "clip_bpe", "context_length": 16}
  check_vocabulary(config.data, build_tokenizer(config.data.tokenizer))  # no unknown token
  config = load_config(DEMO)  # the built-in data: every word known
  check_vocabulary(config.data, build_tokenizer(config.data.tokenizer))


def test_the_cli_stops_before_training(own_shards, tmp_path, cli_env):
  proc = subprocess.run(
    [
      PYTHON,
      "-m",
      "vlpt.cli.train",
      "--config",
      DEMO + ":tiny",
      "--workdir",
      str(tmp_path / "w"),
      f"--config.data.train.source={own_shards}",
    ],
    capture_output=True,
    text=True,
    env=cli_env,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("vlpt: error: ")]
  assert len(lines) == 1 and "--config.data.tokenizer.name=clip_bpe" in lines[0]
  assert "Traceback" not in proc.stderr and "step " not in proc.stdout
  assert not any((tmp_path / "w" / "checkpoints").glob("[0-9]*"))
