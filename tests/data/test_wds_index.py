"""The WebDataset index: written once by `vlpt-data index`, then used instead of scanning tars; the
same examples as a scan, lazily loaded per shard, cheap to pickle, local and on a GCS server."""

import io
import logging
import pickle
import tarfile

import numpy as np
import pytest

from vlpt import storage
from vlpt.cli.data import main as data_main
from vlpt.data import wds_index
from vlpt.data.shards import ShardWriter, encode_image
from vlpt.data.webdataset import WebDatasetSource


def _write(out, n=30, shard_size=8, bad=()):
  """Sample k: constant image k (png), caption 'sample k'; k in ``bad`` has garbage image bytes."""
  with ShardWriter(str(out), shard_size) as w:
    for k in range(n):
      data = (
        b"not an image" if k in bad else encode_image(np.full((8, 8 + k % 3, 3), k, np.uint8), "png")
      )
      w.write(data, "png", f"sample {k}", {"k": k} if k % 2 else None)
  return f"{out}/{{00000..{(n - 1) // shard_size:05d}}}.tar"


def _all(source):
  return [source.read_raw(i) for i in range(len(source))]


def _no_scans(monkeypatch):
  def refuse(path):
    raise AssertionError(f"scanned {path}")

  monkeypatch.setattr(wds_index, "scan_shard", refuse)


def test_index_replaces_the_scan_and_reads_the_same(tmp_path, monkeypatch, capsys, caplog):
  pattern = _write(tmp_path, bad=(5,))
  with caplog.at_level(logging.WARNING, "vlpt.data.wds_index"):
    scanned = WebDatasetSource(pattern, image_size=8, max_bad_fraction=1.0)
  assert "vlpt-data index" in caplog.text  # no index yet: the scan says what it costs
  want = _all(scanned)
  assert data_main(["index", pattern]) == 0
  out = capsys.readouterr().out
  assert "indexed 30 samples in 4 shard(s)" in out
  _no_scans(monkeypatch)
  indexed = WebDatasetSource(pattern, image_size=8, max_bad_fraction=1.0)
  assert indexed.tables.index_path == wds_index.default_index_path(indexed.paths)
  assert len(indexed) == 30 and _all(indexed) == want
  assert [r["key"] for r in want[:3]] == ["000000000", "000000001", "000000002"]
  assert indexed[6]["caption"] == "sample 6" and indexed[5]["caption"] == "sample 6"  # 5 replaced
  assert indexed.skipped["undecodable_image"] == 1
  # the pickled source (sent to grain workers) holds the index's path, not its tables
  blob = pickle.dumps(indexed)
  assert len(blob) < 4000 and b"sample" not in blob
  again = pickle.loads(blob)
  assert again.read_raw(17) == want[17]


def test_index_elsewhere_names_its_shards(tmp_path, monkeypatch, capsys):
  pattern = _write(tmp_path / "shards")
  want = _all(WebDatasetSource(pattern, image_size=8))
  out = tmp_path / "idx" / "set.wdsindex"
  out.parent.mkdir()
  assert data_main(["index", f"wds:{pattern}", "--out", str(out)]) == 0
  assert f"source=wds:{out}" in capsys.readouterr().out
  _no_scans(monkeypatch)
  source = WebDatasetSource(str(out), image_size=8)
  assert _all(source) == want and source.paths[0] == str(tmp_path / "shards" / "00000.tar")


def test_stale_index_is_refused(tmp_path):
  pattern = _write(tmp_path)
  data_main(["index", pattern])
  with open(tmp_path / "00001.tar", "ab") as f:
    f.write(b"\0" * 1024)
  source = WebDatasetSource(pattern, image_size=8)
  source[0]  # shard 0 is unchanged
  with pytest.raises(wds_index.StaleIndex, match="vlpt-data index"):
    source.read_raw(8)


def test_long_member_names_and_truncated_shards(tmp_path):
  """Keys too long for a plain tar header (pax) are kept in the index; a cut tar keeps its head."""
  key = "x" * 150
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
    for name, data in (
      (f"{key}.png", encode_image(np.zeros((8, 8, 3), np.uint8), "png")),
      (f"{key}.txt", b"long"),
      ("short.png", encode_image(np.ones((8, 8, 3), np.uint8), "png")),
      ("short.txt", b"short caption" * 200),
    ):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
    end = tf.offset
  (tmp_path / "a.tar").write_bytes(buf.getvalue()[: end - 1000])  # cuts the last caption
  data_main(["index", str(tmp_path / "a.tar")])
  source = WebDatasetSource(str(tmp_path / "a.tar"), image_size=8, max_bad_fraction=1.0)
  assert source.tables.index_path is not None and source.truncated_shards == 1
  raw = [source.read_raw(i) for i in range(2)]
  assert [r["key"] for r in raw] == [key, "short"]
  assert raw[0]["txt"] == b"long" and not raw[0]["truncated"] and raw[1]["truncated"]


def test_index_and_shards_on_gcs(tmp_path, gcs_bucket, monkeypatch, capsys):
  local = _write(tmp_path, n=12, shard_size=5)
  want = _all(WebDatasetSource(local, image_size=8))
  remote = _write(f"{gcs_bucket}/set", n=12, shard_size=5)
  assert data_main(["index", remote]) == 0
  index = wds_index.default_index_path(
    wds_index_paths := [f"{gcs_bucket}/set/{i:05d}.tar" for i in range(3)]
  )
  assert storage.isfile(index)
  _no_scans(monkeypatch)
  source = WebDatasetSource(remote, image_size=8)
  assert source.paths == wds_index_paths
  got = _all(source)
  for g, w in zip(got, want):
    assert {**g, "url": ""} == {**w, "url": ""}
  assert source[3]["caption"] == "sample 3"
