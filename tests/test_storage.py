"""vlpt.storage on local paths and on gs:// (the loopback GCS emulator), and the metric writer
on a gs:// workdir (no append there)."""

import os
import struct

import pytest

from vlpt import storage
from vlpt.train import writers
from vlpt.train.writers import METRICS_FILE, MetricWriter, read_rows


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "root")
  return request.getfixturevalue("gcs_bucket") + "/root"


def test_resolve_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.resolve("gs://b/run/") == "gs://b/run"
  assert storage.resolve("run") == str(tmp_path / "run")
  assert storage.join("gs://b/run", "checkpoints", "10") == "gs://b/run/checkpoints/10"
  assert storage.split("gs://b/run/checkpoints/10/") == ("gs://b/run/checkpoints", "10")
  assert not os.path.exists(tmp_path / "gs:")


def test_files_round_trip(root, tmp_path):
  storage.makedirs(root)
  assert storage.listdir(root) == [] and not storage.exists(storage.join(root, "a.txt"))
  storage.write_text(storage.join(root, "a.txt"), "one\n")
  storage.write_text(storage.join(root, "a.txt"), "two ü\n")  # replaced whole
  storage.makedirs(storage.join(root, "sub"))  # (nothing to make on GCS)
  storage.write_bytes(storage.join(root, "sub", "b.bin"), b"\x00\x01")
  assert storage.read_text(storage.join(root, "a.txt")) == "two ü\n"
  assert storage.listdir(root) == ["a.txt", "sub"]  # (no .tmp left behind)
  assert storage.isfile(storage.join(root, "a.txt")) and storage.isdir(storage.join(root, "sub"))
  assert list(storage.walk_files(root)) == ["a.txt", "sub/b.bin"]
  local = tmp_path / "copy"
  storage.download(root, str(local))
  assert (local / "sub" / "b.bin").read_bytes() == b"\x00\x01"
  storage.remove_tree(root)
  assert not storage.exists(storage.join(root, "a.txt")) and storage.listdir(root) == []


def test_append_bytes_locally_and_on_gcs(gcs_bucket, tmp_path, monkeypatch):
  for root in (str(tmp_path), gcs_bucket):
    path = storage.join(root, "log.txt")
    for chunk in (b"one\n", b"two\n", b"three\n"):
      storage.append_bytes(path, chunk)
    assert storage.read_bytes(path) == b"one\ntwo\nthree\n"
    assert storage.listdir(root) == ["log.txt"]  # no part object left behind
  # a bucket that cannot compose (zonal): read and written back whole
  path = storage.join(gcs_bucket, "log.txt")
  fs = storage._remote_fs(path)
  monkeypatch.setattr(type(fs), "merge", lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()))
  storage.append_bytes(path, b"four\n")
  assert storage.read_bytes(path) == b"one\ntwo\nthree\nfour\n"
  assert storage.listdir(gcs_bucket) == ["log.txt"]


def test_metric_writer_on_gcs_appends_rows_and_events(gcs_bucket, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  workdir = gcs_bucket + "/run"
  path = storage.join(workdir, METRICS_FILE)
  # whole re-uploads up to 600 bytes (one request each), appends by compose past that
  monkeypatch.setattr(writers, "COMPOSE_ABOVE", 600)
  uploads = []  # (object name, size) of every upload
  write_bytes = storage.write_bytes
  monkeypatch.setattr(
    storage,
    "write_bytes",
    lambda p, d: (uploads.append((storage.basename(p), len(d))), write_bytes(p, d)),
  )
  writer = MetricWriter(workdir)
  for step in range(1, 31):
    writer.write(step, {"train/loss": 1.0 / step, "train/accuracy": step / 30})
    assert [r["step"] for r in read_rows(path)] == list(range(1, step + 1))  # visible at once
  assert storage.file_size(path) > 30 * 70 and max(size for _, size in uploads) <= 600
  metrics = [size for name, size in uploads if name.startswith(METRICS_FILE)]
  assert metrics[:3] == sorted(metrics[:3]) and metrics[2] > 200  # whole: growing
  assert max(metrics[-10:]) < 100  # appended: one row each
  assert all(".append-" not in n for n in storage.listdir(workdir))
  writer.close()
  # a resume from step 2 drops the rows after it, then appends
  writer = MetricWriter(workdir, resume_step=2)
  assert [r["step"] for r in read_rows(path)] == [1, 2]
  writer.write(3, {"train/loss": 0.25})
  writer.close()
  rows = read_rows(path)
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.25)]
  events = storage.listdir(storage.join(workdir, "tensorboard"))
  assert len(events) == 2 and all(n.startswith("events.out.tfevents") for n in events)
  storage.download(storage.join(workdir, "tensorboard"), str(tmp_path / "tb"))
  steps = sorted(_scalar_steps(tmp_path / "tb" / name, "train/loss") for name in events)
  assert steps == [list(range(1, 31)), [3]]  # one file per writer (the two started in the same second)
  assert not os.path.exists(tmp_path / "gs:")


def _scalar_steps(path, tag):
  """The steps of ``tag``'s scalars in an event file (TFRecord framing, tensorboardX's protos)."""
  from tensorboardX.proto.event_pb2 import Event

  data, steps, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at : at + 8])
    event = Event.FromString(data[at + 12 : at + 12 + length])
    at += 12 + length + 4
    steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


def test_a_checkpoint_killed_midway_in_a_bucket_is_ignored_and_redone(gcs_bucket):
  """What a resume on GCS relies on: orbax marks a finished step with commit_success.txt (no
  rename there), lists only such steps, and saves over a step a kill left half-written."""
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from vlpt.train.checkpointing import Checkpointer

  checkpointer = Checkpointer(gcs_bucket + "/run", keep=3, async_save=False)
  directory = checkpointer.directory
  assert checkpointer.latest_step() is None
  checkpointer.close()
  assert directory == gcs_bucket + "/run/checkpoints"

  def manager():
    options = ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
    return ocp.CheckpointManager(directory, options=options)

  def save(m, step, value):
    m.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"a": jnp.full(4, value)})))
    m.wait_until_finished()

  m = manager()
  save(m, 10, 1.0)
  m.close()
  storage.write_text(f"{directory}/20/_CHECKPOINT_METADATA", "{}")  # killed while saving step 20
  storage.write_text(f"{directory}/20/state/partial", "x")
  m = manager()
  assert m.latest_step() == 10 and m.all_steps() == [10]
  save(m, 20, 2.0)
  assert m.all_steps() == [10, 20] and "partial" not in storage.listdir(f"{directory}/20/state")
  restored = m.restore(20, args=ocp.args.Composite(state=ocp.args.StandardRestore({"a": jnp.zeros(4)})))
  assert restored["state"]["a"].tolist() == [2.0] * 4
  m.close()
