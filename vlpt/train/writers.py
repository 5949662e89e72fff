"""Metric sinks: ``WORKDIR/metrics.jsonl``, TensorBoard event files (no TensorFlow), stdout.

Only process 0 writes; every process may call them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax

METRICS_FILE = "metrics.jsonl"  # one JSON object per line, with "step"


class MetricWriter:
  """Writes scalar dicts keyed by step to JSONL and TensorBoard.

  ``resume_step``: a run resuming from that checkpoint first drops the rows logged after it (by
  the interrupted run, and logged again now), so ``metrics.jsonl`` holds every step once.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if resume_step is not None and os.path.exists(path):
      _keep_rows_until(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for key, value in metrics.items():
      value = value if isinstance(value, int) else float(value)
      row[key] = None if isinstance(value, float) and math.isnan(value) else value
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and value is not None:
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_rows(path: str) -> list[dict]:
  """The rows of a ``metrics.jsonl``; a last line cut off by a kill is left out."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:  # (only a torn last line: every write is one flushed line)
        continue
  return rows


def _keep_rows_until(path: str, step: int) -> None:
  rows = [r for r in read_rows(path) if r.get("step", 0) <= step]
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, path)


class Progress:
  """One line per log interval: step, loss, examples/s, ETA.

  The clock starts when the first step has run (:meth:`started`), so neither the rate nor the
  ETA counts compilation; a log line of that first step reports its time instead.
  """

  def __init__(self, total_steps: int, batch_size: int, first_step: int):
    self.total = total_steps
    self.batch = batch_size
    self._last_step = first_step
    self._last_time = time.perf_counter()
    self.first_step_s = None
    self.enabled = jax.process_index() == 0

  def started(self, step: int) -> None:
    """``step``, the first of this run, has finished (compiled and run)."""
    now = time.perf_counter()
    self.first_step_s = now - self._last_time
    self._last_step, self._last_time = step, now

  def update(self, step: int, metrics: Mapping[str, float]) -> float:
    """Prints the line for ``step``; returns examples/s since the last line (NaN for a line of
    the first step alone)."""
    now = time.perf_counter()
    steps = step - self._last_step
    if steps > 0:
      rate = steps * self.batch / max(now - self._last_time, 1e-9)
      speed = f"{rate:,.0f} ex/s | ETA {_hms((self.total - step) * (now - self._last_time) / steps)}"
      self._last_step, self._last_time = step, now
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
