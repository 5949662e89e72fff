"""ArrayRecord and Parquet at scale and on object storage: the record-count index (a start opens no
file), stale indexes, gs:// sets read at random (Parquet) or streamed whole (both), and streamed
mixtures."""

import json
import os

import numpy as np
import pytest
from test_data_formats import write_set

from vlpt.cli.data import main as data_main
from vlpt.config import default_config
from vlpt.data import record_index
from vlpt.data.arrayrecord import ArrayRecordSource
from vlpt.data.files import expand_shards
from vlpt.data.parquet import ParquetSource
from vlpt.data.pipeline import check_config
from vlpt.data.sources import build_source, file_source_options
from vlpt.data.wds_index import StaleIndex

from e2e_utils import data_config, data_stream

CLASSES = {"arrayrecord": ArrayRecordSource, "parquet": ParquetSource}


def _source(spec, **options):
  opts = file_source_options(data_config(spec).data, train=False)
  opts.update(options)
  return build_source(spec, split="train", image_size=32, seed=0, options=opts)


def _values(source, indices):
  return [int(source[i]["image"][0, 0, 0]) for i in indices]


def _no_footer_reads(monkeypatch, fmt):
  def refuse(path):
    raise AssertionError(f"a start read the footer of {path}")

  monkeypatch.setattr(CLASSES[fmt], "count_file", staticmethod(refuse))


@pytest.mark.parametrize("fmt", ["arrayrecord", "parquet"])
def test_an_indexed_set_starts_without_opening_a_file(tmp_path, fmt, monkeypatch, capsys):
  spec = write_set(fmt, tmp_path / "w", 25, 10)  # the writer writes the index with the files
  paths = expand_shards(spec.partition(":")[2])
  written = record_index.find_index(paths)
  assert written and json.loads(open(written).read())["counts"] == [10, 10, 5]
  os.remove(written)
  assert data_main(["index", spec]) == 0  # the CLI writes the same index from the files
  assert f"indexed 25 samples in 3 {fmt} file(s)" in capsys.readouterr().out
  assert json.loads(open(written).read())["counts"] == [10, 10, 5]
  out = tmp_path / "elsewhere" / "set.recindex"
  out.parent.mkdir()
  assert data_main(["index", spec, "--out", str(out)]) == 0
  opened = []
  real_open = CLASSES[fmt]._open
  monkeypatch.setattr(CLASSES[fmt], "_open", lambda self, p: opened.append(p) or real_open(self, p))
  _no_footer_reads(monkeypatch, fmt)
  source = _source(spec)
  assert len(source) == 25 and len(opened) == (1 if fmt == "parquet" else 0)  # parquet: columns
  assert _values(source, [0, 13, 24]) == [0, 13, 24]
  by_index = _source(f"{fmt}:{written}")  # the spec may name the index itself
  assert len(by_index) == 25 and _values(by_index, [24]) == [24]
  assert _values(_source(f"{fmt}:{out}"), [11]) == [11]  # elsewhere, naming the files


@pytest.mark.parametrize("fmt", ["arrayrecord", "parquet"])
def test_a_changed_file_makes_the_index_stale(tmp_path, fmt):
  spec = write_set(fmt, tmp_path, 20, 10)
  with open(tmp_path / f"00001.{'array_record' if fmt == 'arrayrecord' else 'parquet'}", "ab") as f:
    f.write(b"\0" * 7)
  source = _source(spec)
  assert _values(source, [3]) == [3]  # the unchanged file reads
  with pytest.raises(StaleIndex, match=r"00001.* bytes, the index .* says .*vlpt-data index"):
    source[12]


def test_an_unreadable_file_is_recorded_by_the_index(tmp_path, capsys):
  spec = write_set("arrayrecord", tmp_path, 40, 10)
  path = tmp_path / "00003.array_record"
  path.write_bytes(path.read_bytes()[:-100])  # cut short: its footer is gone
  os.remove(record_index.find_index(expand_shards(spec.partition(":")[2])))
  assert data_main(["index", spec]) == 0
  assert "unreadable: " in capsys.readouterr().err
  source = _source(spec, max_bad_fraction=0.5)
  assert source.truncated_shards == 1 and len(source) == 30


@pytest.mark.parametrize("fmt", ["arrayrecord", "parquet"])
def test_a_set_in_a_bucket_reads_as_the_local_one(tmp_path, gcs_bucket, fmt):
  local = _source(write_set(fmt, tmp_path / "local", 20, 8))
  spec = write_set(fmt, f"{gcs_bucket}/{fmt}", 20, 8)
  remote = _source(spec, cache_dir=str(tmp_path / "cache") if fmt == "arrayrecord" else None)
  assert len(remote) == 20
  for i in (0, 7, 8, 19):
    got, want = remote[i], local[i]
    np.testing.assert_array_equal(got["image"], want["image"])
    assert got["caption"] == want["caption"] and got["key"] == want["key"]
  if fmt == "arrayrecord":  # its reader opens local files: fetched whole into the cache
    assert len([n for n in os.listdir(tmp_path / "cache") if n.endswith(".arrayrecord")]) == 3
  assert not os.path.exists("gs:")


def test_random_access_training_over_remote_arrayrecord_is_refused(gcs_bucket):
  spec = write_set("arrayrecord", f"{gcs_bucket}/ar", 8, 4)
  c = default_config()
  c.data.train.source = spec
  with pytest.raises(ValueError, match=r"local files only.*access='stream'"):
    check_config(c.data)
  c.data.train.access = "stream"
  check_config(c.data)


def _stream_config(spec, tmp_path, workers):
  c = data_config(spec, workers=workers)
  c.data.train.access = "stream"
  c.data.train.stream_window = 2
  c.data.train.stream_cache = str(tmp_path / "cache")
  c.data.train.flip = True
  return c


def _resumes_exactly(c):
  it = data_stream(c)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  it.close()
  fresh = data_stream(c)
  fresh.set_state(state)
  for w in want:
    got = next(fresh)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key], err_msg=key)
  fresh.close()
  return want


@pytest.mark.parametrize("fmt", ["arrayrecord", "parquet"])
def test_streaming_records_from_a_bucket_resumes_exactly_with_workers(tmp_path, gcs_bucket, fmt):
  spec = write_set(fmt, f"{gcs_bucket}/s", 20, 4, bad={6: "garbage"})
  want = _resumes_exactly(_stream_config(spec, tmp_path, workers=2))
  assert sum(int(b["skips"].sum()) for b in want) >= 1  # the bad example, replaced and counted


def test_streaming_shares_of_records_are_disjoint_and_cover(tmp_path, gcs_bucket):
  spec = write_set("parquet", f"{gcs_bucket}/p", 24, 4)  # 6 files: 3 a process
  c = _stream_config(spec, tmp_path, workers=0)
  c.data.train.flip = False
  seen = []
  for p in range(2):
    it = data_stream(c, p, 2, batch=4)
    batches = [next(it)["image"][:, 0, 0, 0] for _ in range(6)]  # local batches of 2
    seen.append(np.concatenate(batches).tolist())
    it.close()
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(24))  # one epoch of each process's files


def test_a_streamed_mixture_draws_by_weight_and_resumes_exactly(tmp_path):
  low = write_set("wds", tmp_path / "low", 40, 5)  # values 0..39
  high = write_set("parquet", tmp_path / "high", 40, 5)  # values 0..39 too: told apart by key
  c = _stream_config(low, tmp_path, workers=0)
  c.data.train.mixture = ((low, 3.0), (high, 1.0))
  check_config(c.data)
  _resumes_exactly(c)
  it = data_stream(c, batch=8)
  assert next(it)["image"].shape == (8, 32, 32, 3)
  it.close()
  from vlpt.data.pipeline import _stream_mixture  # which source each element came from

  ds, _ = _stream_mixture(c.data, c.data.train.mixture, 0, 0, 1)
  assert sum(ds[k]["url"].endswith(".tar") for k in range(64)) == 48  # 3:1 by weight


def test_streaming_needs_file_sources(tmp_path):
  c = default_config()
  c.data.train.access = "stream"
  with pytest.raises(ValueError, match=r"access='stream' reads file shards whole"):
    check_config(c.data)
