"""WebDataset shards: index, process shares, robustness, vlpt-data (exact resume with workers for
every source: test_data_resume.py)."""

import io
import subprocess
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlpt.data.files import expand_shards
from vlpt.data.shards import encode_image
from vlpt.data.sources import build_source, file_source_options
from vlpt.data.transforms import CenterCrop, RandomResizedCrop, decode_image
from vlpt.data.webdataset import WebDatasetSource
from vlpt.errors import ConfigError, DataError
from vlpt.train.validation import validate

from conftest import PYTHON, require
from e2e_utils import (
  broken_shards,
  cli,
  data_config,
  data_stream,
  metrics,
  run,
  train_losses,
  write_shards,
)


def test_shard_patterns(tmp_path):
  pattern = write_shards(tmp_path, 25, 10)
  assert pattern == f"{tmp_path}/{{00000..00002}}.tar"
  paths = [str(tmp_path / f"0000{i}.tar") for i in range(3)]
  assert expand_shards(pattern) == paths
  assert expand_shards(str(tmp_path / "shards.txt")) == paths
  assert expand_shards(f"{tmp_path}/0000{{0,2}}.tar::{tmp_path}/00001.tar") == [
    paths[0],
    paths[2],
    paths[1],
  ]
  assert expand_shards(f"{tmp_path}/*.tar") == paths
  source = WebDatasetSource(pattern, image_size=32)
  assert len(source) == 25
  ex = source[13]
  assert ex["image"].shape == (32, 32, 3) and int(ex["image"][0, 0, 0]) == 13
  assert ex["caption"] == "a red circle" and ex["key"] == "000010003"
  c = data_config(f"wds:{tmp_path}/{{00000..00005}}.tar")
  with pytest.raises(ConfigError, match=r"00003.tar does not exist \(3 of 6 shard"):
    validate(c, num_devices=1)


def test_transforms_are_deterministic_and_drafted():
  rng = np.random.default_rng(0)
  photo = (rng.integers(0, 255, (60, 80, 3)) // 64 * 64).astype(np.uint8).repeat(8, 0).repeat(8, 1)
  data = encode_image(photo, "jpg")
  assert decode_image(data).size == (640, 480)
  assert decode_image(data, 100).size == (160, 120)  # 1/4 DCT scale: still >= 100 px
  image = decode_image(data, 224)
  crop = RandomResizedCrop(224, scale=(0.3, 1.0))
  a = crop(image, np.random.default_rng([0, 5]))
  assert a.shape == (224, 224, 3) and a.dtype == np.uint8
  assert np.array_equal(a, crop(image, np.random.default_rng([0, 5])))
  assert not np.array_equal(a, crop(image, np.random.default_rng([0, 6])))
  assert CenterCrop(224)(image).shape == (224, 224, 3)


def test_broken_examples_are_replaced_and_counted(tmp_path):
  pattern = broken_shards(tmp_path)
  source = WebDatasetSource(pattern, image_size=32, max_bad_fraction=0.5)
  assert source.truncated_shards == 1
  n = len(source)
  assert n == 91  # samples 0..90, the last one cut
  ex = source[3]  # garbage image -> sample 4
  assert int(ex["image"][0, 0, 0]) == 4 and ex["skips"].tolist() == [1, 0, 0]
  assert int(source[41]["image"][0, 0, 0]) == 43  # empty caption, garbage image -> 43
  assert source[41]["skips"].tolist() == [1, 1, 0]
  last = source[n - 1]  # the cut sample wraps around to sample 0
  assert int(last["image"][0, 0, 0]) == 0 and last["skips"].tolist() == [0, 0, 1]
  for i in range(n):
    source[i]
  assert source.skipped["undecodable_image"] >= 3 and source.skipped["empty_caption"] >= 2
  strict = WebDatasetSource(pattern, image_size=32, max_bad_fraction=0.01, min_reads=20)
  with pytest.raises(DataError, match=r"worst shard: .*0000\d\.tar"):
    for i in range(n):
      strict[i]


def test_inspect_cli(tmp_path, cli_env):
  pattern = broken_shards(tmp_path)
  out = run([PYTHON, "-m", "vlpt.cli.data", "inspect", pattern], cli_env).stdout.splitlines()
  samples = len(WebDatasetSource(pattern, image_size=32))
  assert out == [f"samples {samples}", "undecodable_images 3", "empty_captions 2", "truncated_shards 1"]


def _broken_run_flags(pattern):
  return [
    f"--config.data.train.source=wds:{pattern}",
    "--config.data.train.shuffle=True",
    "--config.data.num_workers=2",
    "--config.checkpoint_every_steps=5",
    "--config.eval.at_end=False",
  ]


def test_train_on_broken_shards_reports_skips(tmp_path, cli_env):
  pattern = broken_shards(tmp_path / "shards")
  work = tmp_path / "work"
  run(cli("vlpt.cli.train", work, *_broken_run_flags(pattern), "--config.total_steps=8"), cli_env)
  rows = [r for r in metrics(work) if "data/skipped_truncated" in r]
  assert rows[-1]["step"] == 8
  last = rows[-1]
  assert last["data/skipped_undecodable_image"] >= 3 and last["data/skipped_empty_caption"] >= 2
  assert last["data/skipped_truncated"] >= 1


@pytest.mark.slow
def test_train_on_broken_shards_resumes_exactly(tmp_path, cli_env):
  pattern = broken_shards(tmp_path / "shards")
  common = _broken_run_flags(pattern)
  run(cli("vlpt.cli.train", tmp_path / "work", *common, "--config.total_steps=8"), cli_env)
  # interrupted at step 5 (mid-epoch: 160 of 91 examples), resumed from the checkpoint
  parts = tmp_path / "parts"
  run(cli("vlpt.cli.train", parts, *common, "--config.total_steps=5"), cli_env)
  run(cli("vlpt.cli.train", parts, *common, "--config.total_steps=8", "--allow_config_change"), cli_env)
  assert train_losses(parts) == train_losses(tmp_path / "work")
  # the skip counts are checkpointed with the data iterator: the resumed run goes on from them
  last = [r for r in metrics(parts) if "data/skipped_truncated" in r][-1]
  want = [r for r in metrics(tmp_path / "work") if "data/skipped_truncated" in r][-1]
  assert last["step"] == want["step"] == 8
  assert {k: v for k, v in last.items() if k.startswith("data/")} == {
    k: v for k, v in want.items() if k.startswith("data/")
  }


def test_too_many_bad_examples_stop_training_naming_the_shard(tmp_path, cli_env):
  pattern = broken_shards(tmp_path / "shards")
  proc = subprocess.run(
    cli(
      "vlpt.cli.train",
      tmp_path / "work",
      f"--config.data.train.source=wds:{pattern}",
      "--config.data.max_bad_fraction=0.01",
      "--config.data.bad_fraction_min_reads=20",
    ),
    env=cli_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1
  assert "vlpt: error:" in proc.stderr and "config.data.max_bad_fraction=0.01" in proc.stderr
  assert "worst shard:" in proc.stderr and "vlpt-data inspect" in proc.stderr


def test_demo_from_png_shards_matches_in_memory(tmp_path, cli_env):
  steps = 6
  out = tmp_path / "shards"
  proc = subprocess.run(
    [
      PYTHON,
      "-m",
      "vlpt.cli.data",
      "build",
      "--from",
      "synthetic",
      "--num",
      str(steps * 32),
      "--out",
      str(out),
      "--image-size",
      "32",
      "--format",
      "png",
      "--shard-size",
      "50",
    ],
    env=cli_env,
    capture_output=True,
    text=True,
    check=True,
  )
  pattern = proc.stdout.split(": ")[1].split()[0]
  common = [f"--config.total_steps={steps}", "--config.eval.at_end=False"]
  run(cli("vlpt.cli.train", tmp_path / "mem", *common), cli_env)
  run(
    cli(
      "vlpt.cli.train",
      tmp_path / "wds",
      *common,
      f"--config.data.train.source=wds:{pattern}",
      "--config.data.train.crop_scale=(1.0, 1.0)",
    ),
    cli_env,
  )
  want, got = train_losses(tmp_path / "mem"), train_losses(tmp_path / "wds")
  assert len(want) == steps and got == want


def test_truncated_tar_header_only(tmp_path):
  write_shards(tmp_path, 4, 10)
  path = tmp_path / "00000.tar"
  with open(path, "r+b") as f:
    f.truncate(300)  # inside the first header
  with pytest.raises(DataError, match="no samples"):
    WebDatasetSource(str(path), image_size=32)
  buf = io.BytesIO()  # a tar cut at a member boundary (no end-of-archive blocks)
  with tarfile.open(fileobj=buf, mode="w") as tf:
    for name, data in (
      ("a.png", encode_image(np.zeros((32, 32, 3), np.uint8), "png")),
      ("a.txt", b"a caption"),
    ):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
    end = tf.offset
  (tmp_path / "cut.tar").write_bytes(buf.getvalue()[:end])
  source = WebDatasetSource(str(tmp_path / "cut.tar"), image_size=32)
  assert len(source) == 1 and source.truncated_shards == 1 and source[0]["caption"] == "a caption"


class VlptTestCaptions(tfds.core.GeneratorBasedBuilder):
  """12 constant images (value k) with captions 'sample k'; sample 5's caption is empty."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 3)), "caption": tfds.features.Text()}
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from PIL import Image

    for k in range(12):
      yield (
        k,
        {
          "image": Image.fromarray(np.full((40, 48, 3), k, np.uint8)),
          "caption": "" if k == 5 else f"sample {k}",
        },
      )


def test_tfds_source_without_tensorflow(tmp_path):
  VlptTestCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  c = data_config("tfds:vlpt_test_captions", shuffle=False)
  c.data.tfds_data_dir = str(tmp_path)
  source = build_source(
    c.data.train.source,
    split="train",
    image_size=32,
    seed=0,
    options=file_source_options(c.data, train=False),
  )
  assert len(source) == 12
  examples = [source[i] for i in range(12)]
  for ex in examples:
    assert ex["image"].shape == (32, 32, 3)
    assert ex["caption"] == f"sample {int(ex['image'][0, 0, 0])}"
  assert sum(int(ex["skips"][1]) for ex in examples) == 1  # the empty caption, replaced
  batch = next(data_stream(c, batch=4))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["skips"].shape == (4, 3)


def test_build_from_folder_csv_and_parquet(tmp_path, capsys):
  from vlpt.cli.data import main

  photos = tmp_path / "photos"
  (photos / "sub").mkdir(parents=True)
  for k, name in enumerate(("a.jpg", "b.png", "sub/c.jpg")):
    (photos / name).write_bytes(
      encode_image(np.full((40, 30, 3), 10 * k, np.uint8), name.rsplit(".", 1)[1])
    )
    (photos / name).with_suffix(".txt").write_text(f"photo {k}\n")
  assert main(["build", "--from", "folder", str(photos), "--out", str(tmp_path / "f")]) == 0
  source = WebDatasetSource(str(tmp_path / "f" / "00000.tar"), image_size=32)
  assert [source[i]["caption"] for i in range(3)] == ["photo 0", "photo 1", "photo 2"]
  (tmp_path / "t.tsv").write_text("path\tcaption\nphotos/a.jpg\tfirst\nphotos/b.png\tsecond\n")
  assert (
    main(
      [
        "build",
        "--from",
        "csv",
        str(tmp_path / "t.tsv"),
        "--out",
        str(tmp_path / "c"),
        "--shard-size",
        "1",
      ]
    )
    == 0
  )
  assert "{00000..00001}.tar" in capsys.readouterr().out
  source = WebDatasetSource(str(tmp_path / "c" / "shards.txt"), image_size=32)
  assert [source[i]["caption"] for i in range(2)] == ["first", "second"]
  pq = require("pyarrow.parquet")
  import pyarrow as pa

  pq.write_table(
    pa.table({"path": [str(photos / "sub" / "c.jpg")], "caption": ["third"]}), tmp_path / "t.parquet"
  )
  assert main(["build", "--from", "csv", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "p")]) == 0
  assert WebDatasetSource(str(tmp_path / "p" / "00000.tar"), image_size=32)[0]["caption"] == "third"


def test_weighted_mixture_of_sources(tmp_path):
  """Shards (constant images) mixed 3:1 with the synthetic source (textured images): the stream
  holds them in that proportion, deterministically."""
  a = write_shards(tmp_path / "a", 40, 10)
  c = data_config("synthetic", shuffle=True)
  c.data.train.mixture = ((f"wds:{a}", 3.0), ("synthetic", 1.0))
  batches = [next(it) for it in [data_stream(c)] for _ in range(25)]
  again = [next(it) for it in [data_stream(c)] for _ in range(25)]
  constant = sum(int((batch["image"].reshape(8, -1).std(axis=1) == 0).sum()) for batch in batches)
  assert constant == 150  # 3/4 of 200 examples
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x["image"], y["image"])
