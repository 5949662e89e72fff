"""Metric sinks: ``WORKDIR/metrics.jsonl``, TensorBoard event files (no TensorFlow), stdout.

Only process 0 writes; every process may call them. On a ``gs://`` workdir, which has no append,
a write re-uploads the whole ``metrics.jsonl`` object (one request) while it is at most
:data:`COMPOSE_ABOVE` bytes, and past that appends its row with :func:`vlpt.storage.append_bytes`
(three requests: the row's upload, a server-side compose, the row object's deletion), so a write
never costs more than a megabyte's upload however long the run logs (a training row is about 300
bytes: a megabyte is about 3,000 log intervals). The event file is written locally and uploaded
after each flush the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping

import jax

from vlpt import storage

METRICS_FILE = "metrics.jsonl"  # one JSON object per line, with "step"
# remote files up to this size are re-uploaded whole at each write (one request); larger ones are
# appended to by compose (three requests, each carrying only the new bytes)
COMPOSE_ABOVE = 1 << 20


class MetricWriter:
  """Writes scalar dicts keyed by step to JSONL and TensorBoard.

  ``resume_step``: a run resuming from that checkpoint first drops the rows logged after it (by
  the interrupted run, and logged again now), so ``metrics.jsonl`` holds every step once.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    self._remote_data = None  # a gs:// metrics.jsonl's bytes while small enough to re-upload whole
    if not self.enabled:
      return
    storage.makedirs(workdir)
    self._path = path = storage.join(workdir, METRICS_FILE)
    if resume_step is not None and storage.exists(path):
      _keep_rows_until(path, resume_step)
    if storage.is_remote(path):
      self._remote_data = storage.read_bytes(path) if storage.exists(path) else b""
    else:
      self._jsonl = open(path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter

      # tensorboardX reaches gs:// only through google-cloud-storage's default credentials:
      # a remote run's event file is written here and uploaded (_upload_events)
      self._tb_dir = storage.join(workdir, "tensorboard")
      remote = storage.is_remote(self._tb_dir)
      self._tb_local = tempfile.mkdtemp(prefix="vlpt-tensorboard-") if remote else None
      self._tb_uploaded: dict[str, int] = {}  # remote: each local event file's bytes appended
      # (tensorboardX names the file by the second: a writer started in the same second, such as
      # vlpt-eval's, would replace it without a suffix of its own)
      self._tb = SummaryWriter(
        self._tb_local or self._tb_dir, filename_suffix=f".{uuid.uuid4().hex[:8]}"
      )

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for key, value in metrics.items():
      value = value if isinstance(value, int) else float(value)
      row[key] = None if isinstance(value, float) and math.isnan(value) else value
    line = json.dumps(row) + "\n"
    if self._jsonl is not None:
      self._jsonl.write(line)
      self._jsonl.flush()
    elif self._remote_data is not None and len(self._remote_data) + len(line) <= COMPOSE_ABOVE:
      self._remote_data += line.encode("utf-8")
      storage.write_bytes(self._path, self._remote_data)
    else:  # past the limit: the object exists (a first row over a megabyte is created by this)
      exists_now = self._remote_data != b""
      self._remote_data = None
      storage.append_bytes(self._path, line.encode("utf-8"), exists_now=exists_now)
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and value is not None:
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()
      self._upload_events()

  def _upload_events(self) -> None:
    """Uploads the local event files (whole up to :data:`COMPOSE_ABOVE` bytes, then what each
    gained since its last upload, appended: event files only grow)."""
    if self._tb_local is None:
      return
    for name in os.listdir(self._tb_local):
      local, remote = os.path.join(self._tb_local, name), storage.join(self._tb_dir, name)
      done = self._tb_uploaded.get(name, 0)
      whole = os.path.getsize(local) <= COMPOSE_ABOVE
      with open(local, "rb") as f:
        f.seek(0 if whole else done)
        data = f.read()
      if whole:
        storage.write_bytes(remote, data)
      elif data:
        storage.append_bytes(remote, data, exists_now=done > 0)
      self._tb_uploaded[name] = (0 if whole else done) + len(data)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
      self._upload_events()
      if self._tb_local is not None:
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._tb = None


def read_rows(path: str) -> list[dict]:
  """The rows of a ``metrics.jsonl``; a last line cut off by a kill is left out."""
  rows = []
  for line in storage.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:  # (only a torn last line: every write is one flushed line)
      continue
  return rows


def _keep_rows_until(path: str, step: int) -> None:
  rows = [r for r in read_rows(path) if r.get("step", 0) <= step]
  storage.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))  # (atomic locally)


class Progress:
  """One line per log interval: step, loss, examples/s, ETA.

  The clock starts when the first step has run (:meth:`started`), so neither the rate nor the
  ETA counts compilation; a log line of that first step reports its time instead. Time spent
  checkpointing or evaluating (:meth:`exclude`) is left out of the rate (not the ETA), so
  ``train/examples_per_s`` times training steps only.
  """

  def __init__(self, total_steps: int, batch_size: int, first_step: int):
    self.total = total_steps
    self.batch = batch_size
    self._last_step = first_step
    self._last_time = time.perf_counter()
    self._excluded = 0.0
    self.first_step_s = None
    self.enabled = jax.process_index() == 0

  def exclude(self, seconds: float) -> None:
    """``seconds`` since the last line were not training (a checkpoint, an evaluation)."""
    self._excluded += seconds

  def started(self, step: int) -> None:
    """``step``, the first of this run, has finished (compiled and run)."""
    now = time.perf_counter()
    self.first_step_s = now - self._last_time
    self._last_step, self._last_time, self._excluded = step, now, 0.0

  def update(self, step: int, metrics: Mapping[str, float]) -> float:
    """Prints the line for ``step``; returns examples/s since the last line (NaN for a line of
    the first step alone)."""
    now = time.perf_counter()
    steps = step - self._last_step
    if steps > 0:
      rate = steps * self.batch / max(now - self._last_time - self._excluded, 1e-9)
      speed = f"{rate:,.0f} ex/s | ETA {_hms((self.total - step) * (now - self._last_time) / steps)}"
      self._last_step, self._last_time, self._excluded = step, now, 0.0
    else:
      rate = float("nan")
      speed = f"first step {self.first_step_s or 0:.1f}s (compilation included)"
    if self.enabled:
      extras = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items() if k != "train/loss")
      print(
        f"[vlpt] step {step:>6d}/{self.total} loss={metrics.get('train/loss', float('nan')):.4f}"
        f" {extras} | {speed}",
        file=sys.stdout,
        flush=True,
      )
    return rate


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
