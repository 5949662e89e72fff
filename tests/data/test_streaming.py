"""Streaming order (config.data.train.access='stream'): whole shards per process, shuffled per
epoch and within windows; exact resume with workers, disjoint covering shares and counted bad
examples, reading shards from a GCS server."""

import os

import numpy as np
from test_data_formats import write_set

from vlpt.cli.data import main as data_main
from vlpt.config import default_config
from vlpt.data.streaming import ProcessPositions, ShardStream
from vlpt.data.webdataset import WebDatasetSource

from e2e_utils import data_stream


class _Indices:
  """A stand-in source whose example is its own index."""

  def __init__(self, counts):
    self.shard_counts = np.asarray(counts)
    self.shard_starts = np.concatenate([[0], np.cumsum(counts)])

  def __getitem__(self, i):
    return int(i)


def _shard_of(i, starts):
  return int(np.searchsorted(starts, i, side="right")) - 1


def test_stream_order_covers_epochs_by_shard_windows():
  counts = [5, 7, 6, 4, 8, 5, 6]
  source = _Indices(counts)
  starts = source.shard_starts
  per_process = []
  for p in range(2):
    stream = ShardStream(source, seed=3, window=2, shuffle=True, process_index=p, process_count=2)
    epoch0 = stream._epoch(0)
    length = int(epoch0[2][-1])
    got = [stream.example_index(k) for k in range(length)]
    assert sorted(got) == sorted(j for s in epoch0[0] for j in range(starts[s], starts[s + 1]))
    shards = [_shard_of(i, starts) for i in got]
    for lo in range(0, len(epoch0[0]), 2):  # each window of 2 shards is read before the next
      window = set(epoch0[0][lo : lo + 2].tolist())
      n = sum(counts[s] for s in window)
      assert set(shards[:n]) == window
      shards = shards[n:]
    nxt = [stream.example_index(length + k) for k in range(int(stream._epoch(1)[2][-1]))]
    assert nxt != got  # the next epoch is another order
    positions = ProcessPositions(stream, global_batch=4, process_index=p, process_count=2)
    assert positions[5] == ((5 // 2) * 4 + p * 2 + 5 % 2, got[5])
    per_process.append(got)
  assert not set(per_process[0]) & set(per_process[1])
  assert sorted(per_process[0] + per_process[1]) == list(range(sum(counts)))


def _config(spec, tmp_path, workers):
  c = default_config()
  c.data.image_size = 32
  c.data.num_workers = workers
  c.data.train.source = spec
  c.data.train.shuffle = True
  c.data.train.access = "stream"
  c.data.train.stream_window = 2
  c.data.train.stream_cache = str(tmp_path / "cache")
  c.data.train.crop_scale = (1.0, 1.0)
  c.data.train.flip = True
  return c


def test_stream_from_gcs_resumes_exactly_with_workers(tmp_path, gcs_bucket):
  spec = write_set("wds", f"{gcs_bucket}/bad", 20, 4, bad={7: "garbage"})
  assert data_main(["index", spec]) == 0
  c = _config(spec, tmp_path, workers=2)
  c.data.train.color_jitter = 0.3
  it = data_stream(c)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(5)]  # past the end of the epoch (20 examples, batches of 8)
  it.close()
  assert sum(int(b["skips"].sum()) for b in want) >= 1  # the bad example, replaced and counted
  assert os.listdir(tmp_path / "cache")  # shards were fetched whole
  fresh = data_stream(c)
  fresh.set_state(state)
  for w in want:
    got = next(fresh)
    assert sorted(got) == sorted(w)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key], err_msg=key)
  fresh.close()


def test_stream_process_shares_from_gcs_are_disjoint_and_cover(tmp_path, gcs_bucket):
  spec = write_set("wds", f"{gcs_bucket}/clean", 20, 4)
  assert data_main(["index", spec]) == 0
  c = _config(spec, tmp_path, workers=0)
  source = WebDatasetSource(spec.removeprefix("wds:"), image_size=32)
  seen = []
  for p in range(2):
    stream = ShardStream(source, seed=0, window=2, shuffle=True, process_index=p, process_count=2)
    length = int(stream._epoch(0)[2][-1])  # this process's shards in epoch 0
    it = data_stream(c, p, 2, batch=4)
    values = np.concatenate([next(it)["image"][:, 0, 0, 0] for _ in range(length // 2)])
    it.close()
    seen.append(values.tolist())
  assert not set(seen[0]) & set(seen[1])  # (a flip keeps the constant images constant)
  assert sorted(seen[0] + seen[1]) == list(range(20))
