"""ArrayRecord and Parquet sources, their writers and `vlpt-data`; flip / color jitter; skip counts
in the iterator state."""

import json

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlpt.config import default_config
from vlpt.data.arrayrecord import ArrayRecordSource, encode_record
from vlpt.data.parquet import ParquetSource
from vlpt.data.pipeline import SkipCounter, TrainTransform, train_dataset
from vlpt.data.shards import encode_image, make_writer
from vlpt.data.sources import build_source, file_source_options
from vlpt.data.tokenizers import build_tokenizer
from vlpt.data.transforms import augment, color_jitter
from vlpt.errors import ConfigError, DataError
from vlpt.train.validation import validate

from e2e_utils import data_config

FORMATS = ("wds", "arrayrecord", "parquet")
SUFFIX = {"wds": "tar", "arrayrecord": "array_record", "parquet": "parquet"}


def write_set(fmt, out, n, shard_size, *, bad=None, size=32, row_group_size=4):
  """Sample k: a constant PNG image of value k, caption 'sample k' (odd k: two captions).

  ``bad``: {k: 'garbage' | 'empty'} corrupts sample k. Returns the source spec.
  """
  bad = bad or {}
  writer = make_writer(fmt, str(out), shard_size, row_group_size=row_group_size)
  with writer:
    for k in range(n):
      data = encode_image(np.full((size, size + 8 * (k % 3), 3), k, np.uint8), "png")
      caption = f"sample {k}"
      if bad.get(k) == "garbage":
        data = b"this is not an image"
      elif bad.get(k) == "empty":
        caption = "  "
      meta = (
        {"caption": caption, "captions": [caption, f"{caption} again"]}
        if k % 2 and caption.strip()
        else None
      )
      writer.write(data, "png", caption, meta)
  return f"{fmt}:{writer.close()}"


def _source(spec, **options):
  c = data_config(spec)
  opts = file_source_options(c.data, train=False)
  opts.update(options)
  return build_source(spec, split="train", image_size=32, seed=0, options=opts)


def _value(example):
  return int(example["image"][0, 0, 0])


@pytest.mark.parametrize("fmt", ["arrayrecord", "parquet"])
def test_written_records_read_back(tmp_path, fmt):
  spec = write_set(fmt, tmp_path, 25, 10)
  assert spec == f"{fmt}:{tmp_path}/{{00000..00002}}.{SUFFIX[fmt]}"
  source = _source(spec)
  assert isinstance(source, ArrayRecordSource if fmt == "arrayrecord" else ParquetSource)
  assert len(source) == 25 and len(source.paths) == 3
  for k in (0, 9, 10, 13, 24):
    ex = source[k]
    assert _value(ex) == k and ex["image"].shape == (32, 32, 3)
    assert ex["caption"] == f"sample {k}" and ex["key"] == f"0000{k // 10}{k % 10:04d}"
    assert ex["captions"] == ([f"sample {k}", f"sample {k} again"] if k % 2 else [f"sample {k}"])
    assert ex["skips"].tolist() == [0, 0, 0]
  same = _source(f"{fmt}:{tmp_path}/shards.txt")  # the list file written beside the shards
  assert len(same) == 25 and _value(same[24]) == 24
  if fmt == "parquet":  # small row groups, for random access
    assert pq.ParquetFile(tmp_path / "00000.parquet").metadata.num_row_groups == 3


def test_parquet_columns_found_by_name_or_configured(tmp_path):
  png = [encode_image(np.full((32, 32, 3), k, np.uint8), "png") for k in range(6)]
  # img2dataset-like names
  pq.write_table(
    pa.table({"jpg": png, "txt": [f"t{k}" for k in range(6)]}), tmp_path / "a.parquet", row_group_size=2
  )
  source = _source(f"parquet:{tmp_path}/a.parquet")
  assert (source.image_field, source.caption_field) == ("jpg", "txt")
  assert [source[k]["caption"] for k in range(6)] == [f"t{k}" for k in range(6)]
  # Hugging Face datasets: image struct {bytes, path}, a list of captions
  images = [{"bytes": b, "path": f"{k}.png"} for k, b in enumerate(png)]
  pq.write_table(
    pa.table(
      {"image": images, "sentences": [[f"s{k}", f"r{k}"] for k in range(6)], "caption": [""] * 6}
    ),
    tmp_path / "hf.parquet",
  )
  with pytest.raises(ValueError, match="no caption field 'nope'"):
    _source(f"parquet:{tmp_path}/hf.parquet", caption_field="nope")
  c = data_config(f"parquet:{tmp_path}/hf.parquet")
  c.data.caption_field = "sentences"
  source = build_source(
    c.data.train.source,
    split="train",
    image_size=32,
    seed=0,
    options=file_source_options(c.data, train=False),
  )
  ex = source[4]
  assert _value(ex) == 4 and ex["caption"] == "s4" and ex["captions"] == ["s4", "r4"]
  pq.write_table(pa.table({"pixels": png, "caption": ["c"] * 6}), tmp_path / "x.parquet")
  with pytest.raises(ValueError, match="found no image field .*config.data.image_field"):
    _source(f"parquet:{tmp_path}/x.parquet")


def test_arrayrecord_other_field_names(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(tmp_path / "a.array_record"), "group_size:1")
  for k in range(4):
    writer.write(
      msgpack.packb(
        {
          "jpg": encode_image(np.full((32, 32, 3), k, np.uint8), "png"),
          "txt": f"t{k}",
          "alt": f"alt {k}",
        }
      )
    )
  writer.close()
  source = _source(f"arrayrecord:{tmp_path}/a.array_record")
  assert [(_value(source[k]), source[k]["caption"]) for k in range(4)] == [
    (k, f"t{k}") for k in range(4)
  ]
  source = _source(f"arrayrecord:{tmp_path}/a.array_record", caption_field="alt")
  assert source[2]["caption"] == "alt 2"


def _corrupt_array_record_chunk(path, payload):
  """Flips a byte inside ``payload`` (stored uncompressed): its chunk fails the checksum."""
  data = bytearray(path.read_bytes())
  at = data.index(payload) + len(payload) // 2
  data[at] ^= 0xFF
  path.write_bytes(bytes(data))


def test_broken_arrayrecord_set(tmp_path):
  bad = {3: "garbage", 7: "empty", 8: "empty"}
  write_set("arrayrecord", tmp_path, 40, 10, bad=bad)
  # record 12: its chunk is damaged; record 15: not MessagePack
  _corrupt_array_record_chunk(
    tmp_path / "00001.array_record",
    encode_image(np.full((32, 32 + 8 * (12 % 3), 3), 12, np.uint8), "png"),
  )
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(tmp_path / "00004.array_record"), "group_size:1,uncompressed")
  writer.write(b"\xc1 not msgpack")
  writer.write(
    encode_record(
      {"image": encode_image(np.full((32, 32, 3), 41, np.uint8), "png"), "caption": "sample 41"}
    )
  )
  writer.close()
  full = (tmp_path / "00003.array_record").read_bytes()
  (tmp_path / "00005.array_record").write_bytes(full[: len(full) - 100])  # cut short: unreadable
  spec = f"arrayrecord:{tmp_path}/{{00000..00005}}.array_record"
  source = _source(spec, max_bad_fraction=0.5)
  assert source.truncated_shards == 1 and len(source.paths) == 5 and len(source) == 42
  assert _value(source[3]) == 4 and source[3]["skips"].tolist() == [1, 0, 0]
  assert _value(source[7]) == 9 and source[7]["skips"].tolist() == [0, 2, 0]
  assert _value(source[12]) == 13 and source[12]["skips"].tolist() == [0, 0, 1]
  assert _value(source[40]) == 41 and source[40]["skips"].tolist() == [0, 0, 1]
  # too many unreadable files, or too many bad examples: a clear error naming the file
  with pytest.raises(DataError, match=r"1 of 6 arrayrecord file\(s\).*00005.array_record"):
    _source(spec, max_bad_fraction=0.1)
  strict = _source(f"arrayrecord:{tmp_path}/00000.array_record", max_bad_fraction=0.05, min_reads=5)
  with pytest.raises(DataError, match=r"worst shard: .*00000.array_record"):
    for i in range(10):
      strict[i]


def test_broken_parquet_set(tmp_path):
  write_set("parquet", tmp_path, 30, 10, bad={2: "garbage", 11: "empty"})
  full = (tmp_path / "00002.parquet").read_bytes()
  (tmp_path / "00003.parquet").write_bytes(full[: len(full) // 2])
  source = _source(f"parquet:{tmp_path}/*.parquet", max_bad_fraction=0.5)
  assert source.truncated_shards == 1 and len(source) == 30
  assert _value(source[2]) == 3 and source[2]["skips"].tolist() == [1, 0, 0]
  assert _value(source[11]) == 12 and source[11]["skips"].tolist() == [0, 1, 0]


@pytest.mark.parametrize("fmt", ["arrayrecord", "parquet"])
def test_inspect_and_build_cli(tmp_path, fmt, capsys):
  from vlpt.cli.data import main

  write_set(fmt, tmp_path / "s", 12, 5, bad={1: "garbage", 4: "empty", 6: "empty"})
  assert main(["inspect", f"{tmp_path}/s/*.{SUFFIX[fmt]}"]) == 0
  assert main(["inspect", f"{fmt}:{tmp_path}/s/shards.txt"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["samples 12", "undecodable_images 1", "empty_captions 2", "truncated_shards 0"] * 2
  assert (
    main(
      [
        "build",
        "--from",
        "synthetic",
        "--num",
        "7",
        "--image-size",
        "32",
        "--format",
        fmt,
        "--image-format",
        "png",
        "--shard-size",
        "3",
        "--out",
        str(tmp_path / "b"),
      ]
    )
    == 0
  )
  out = capsys.readouterr().out.splitlines()
  pattern = f"{tmp_path}/b/{{00000..00002}}.{SUFFIX[fmt]}"
  assert out == [
    f"wrote 7 samples in 3 shard(s): {pattern}",
    f"train with --config.data.train.source={fmt}:{pattern}",
  ]
  from vlpt.data.synthetic import SyntheticCaptions

  want = SyntheticCaptions("train", image_size=32, seed=0, num_examples=7)
  got = _source(f"{fmt}:{pattern}")
  for k in range(7):  # lossless: the in-memory examples, bit for bit
    np.testing.assert_array_equal(got[k]["image"], want[k]["image"])
    assert got[k]["captions"] == list(want[k]["captions"])


def test_build_from_parquet_of_image_bytes(tmp_path):
  from vlpt.cli.data import main

  png = [encode_image(np.full((32, 32, 3), k, np.uint8), "png") for k in range(5)]
  pq.write_table(pa.table({"image": png, "text": [f"t{k}" for k in range(5)]}), tmp_path / "in.parquet")
  for fmt in FORMATS:
    assert (
      main(
        [
          "build",
          "--from",
          "csv",
          str(tmp_path / "in.parquet"),
          "--format",
          fmt,
          "--out",
          str(tmp_path / fmt),
        ]
      )
      == 0
    )
    source = _source(f"{fmt}:{tmp_path}/{fmt}/00000.{SUFFIX[fmt]}")
    assert [(_value(source[k]), source[k]["caption"]) for k in range(5)] == [
      (k, f"t{k}") for k in range(5)
    ]
  with pytest.raises(SystemExit, match="--row-group-size applies to --format parquet only"):
    main(["build", "--from", "synthetic", "--out", str(tmp_path / "x"), "--row-group-size", "4"])


def test_png_format_flag_still_means_wds(tmp_path, capsys):
  from vlpt.cli.data import main

  assert (
    main(["build", "--from", "synthetic", "--num", "3", "--format", "png", "--out", str(tmp_path)]) == 0
  )
  assert capsys.readouterr().out.splitlines()[-1].endswith(f"wds:{tmp_path}/00000.tar")
  with pytest.raises(SystemExit, match="disagree"):
    main(
      [
        "build",
        "--from",
        "synthetic",
        "--format",
        "png",
        "--image-format",
        "jpg",
        "--out",
        str(tmp_path),
      ]
    )


def test_config_accepts_new_sources_and_checks_files(tmp_path):
  spec = write_set("parquet", tmp_path, 4, 2)
  c = data_config(spec)
  validate(c, num_devices=1)
  c.data.train.source = f"arrayrecord:{tmp_path}/{{00000..00003}}.array_record"
  with pytest.raises(ConfigError, match=r"00000.array_record does not exist \(4 of 4"):
    validate(c, num_devices=1)
  c = data_config("synthetic")
  c.data.train.color_jitter = -0.5
  with pytest.raises(ConfigError, match="color_jitter=-0.5 must be >= 0"):
    validate(c, num_devices=1)


# ---------------------------------------------------------------------------------------------
# flip and color jitter


def test_color_jitter_and_flip_are_seeded():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
  a = color_jitter(image, 0.4, np.random.default_rng([1, 2]))
  assert a.dtype == np.uint8 and a.shape == image.shape and not np.array_equal(a, image)
  np.testing.assert_array_equal(a, color_jitter(image, 0.4, np.random.default_rng([1, 2])))
  assert color_jitter(image, 0.0, rng) is image
  gray = np.full((4, 4, 3), 100, np.uint8)  # saturation and contrast leave a flat gray alone
  out = color_jitter(gray, 0.5, np.random.default_rng(3))
  assert (out == out[0, 0, 0]).all()
  flips = [augment(image, np.random.default_rng([0, p]), flip=True) for p in range(64)]
  flipped = [np.array_equal(f, image[:, ::-1]) for f in flips]
  assert all(f or np.array_equal(g, image) for f, g in zip(flipped, flips))
  assert 16 < sum(flipped) < 48


def test_train_transform_flip_and_jitter_by_position():
  tok = build_tokenizer(default_config().data.tokenizer)
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  example = {"image": image, "caption": "a photo"}
  plain = TrainTransform(tok, seed=0)
  assert np.array_equal(plain((5, example))["image"], image)
  aug = TrainTransform(tok, seed=0, flip=True, color_jitter=0.3)
  outs = [aug((p, example))["image"] for p in range(8)]
  assert all(np.array_equal(o, aug((p, example))["image"]) for p, o in enumerate(outs))
  assert len({o.tobytes() for o in outs}) == 8
  c = data_config("synthetic", shuffle=False)
  c.data.train.flip, c.data.train.color_jitter = True, 0.2
  tok = build_tokenizer(c.data.tokenizer)
  batch = next(
    iter(train_dataset(c.data, tokenizer=tok, global_batch=4, seed=0, process_index=0, process_count=1))
  )
  c.data.train.flip, c.data.train.color_jitter = False, 0.0
  base = next(
    iter(train_dataset(c.data, tokenizer=tok, global_batch=4, seed=0, process_index=0, process_count=1))
  )
  assert batch["image"].shape == base["image"].shape
  assert not np.array_equal(batch["image"], base["image"])
  np.testing.assert_array_equal(batch["text"], base["text"])


# ---------------------------------------------------------------------------------------------
# skip counts are part of the iterator state


def _skip_iterator(c):
  tok = build_tokenizer(c.data.tokenizer)
  return SkipCounter(
    iter(train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0, process_index=0, process_count=1))
  )


def test_skip_counts_survive_a_restore(tmp_path):
  bad = {k: ("garbage" if k % 2 else "empty") for k in range(0, 40, 5)}
  c = data_config(write_set("arrayrecord", tmp_path, 40, 10, bad=bad))
  c.data.max_bad_fraction = 0.5
  it = _skip_iterator(c)
  for _ in range(4):
    next(it)
  state = it.get_state()
  assert set(state) == {"iterator", "skipped"} and sum(state["skipped"].values()) > 0
  json.dumps(state)  # what DeviceLoader writes into the checkpoint
  rest = [next(it) for _ in range(4)]
  final = dict(it.counts)
  fresh = _skip_iterator(c)
  fresh.set_state(json.loads(json.dumps(state)))
  assert fresh.counts == state["skipped"]
  for want in rest:
    got = next(fresh)
    np.testing.assert_array_equal(got["image"], want["image"])
    assert "skips" not in got
  assert fresh.counts == final
  legacy = _skip_iterator(c)  # a checkpoint from before: the bare grain state
  legacy.set_state(state["iterator"])
  assert legacy.counts == {}
  np.testing.assert_array_equal(next(legacy)["image"], rest[0]["image"])


def test_device_loader_reports_counts_of_consumed_batches(tmp_path):
  import jax

  from vlpt.data.loader import DeviceLoader

  c = data_config(write_set("parquet", tmp_path, 24, 8, bad={1: "garbage", 9: "empty"}))
  c.data.max_bad_fraction = 0.5
  from vlpt.sharding import make_mesh

  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  loader = DeviceLoader(lambda: _skip_iterator(c), mesh, 1)
  assert loader.skipped == {}
  counts = []
  for _ in range(6):  # two epochs
    next(loader)
    counts.append(loader.skipped)
  saved = loader.get_state()
  loader.close()
  assert counts[2] == {"undecodable_image": 1, "empty_caption": 1, "truncated": 0}
  assert counts[5] == {"undecodable_image": 2, "empty_caption": 2, "truncated": 0}
  restored = DeviceLoader(lambda: _skip_iterator(c), mesh, 1)
  restored.set_state(saved)
  assert restored.skipped == counts[5]
  next(restored)
  assert restored.skipped["undecodable_image"] >= 2
  restored.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_lossless_shards_stream_like_the_in_memory_source(tmp_path, fmt):
  """PNG shards of the synthetic set written by `vlpt-data build --format FMT` give the training
  stream of the in-memory source, batch for batch (images, chosen captions)."""
  from vlpt.cli.data import main

  assert (
    main(
      [
        "build",
        "--from",
        "synthetic",
        "--num",
        "24",
        "--image-size",
        "32",
        "--format",
        fmt,
        "--image-format",
        "png",
        "--shard-size",
        "10",
        "--out",
        str(tmp_path),
      ]
    )
    == 0
  )
  memory = data_config("synthetic", shuffle=False)
  files = data_config(f"{fmt}:{tmp_path}/shards.txt", shuffle=False)
  tok = build_tokenizer(memory.data.tokenizer)
  streams = [
    iter(train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0, process_index=0, process_count=1))
    for c in (memory, files)
  ]
  for _ in range(3):
    want, got = (next(s) for s in streams)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["text"], want["text"])
