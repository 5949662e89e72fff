"""The training loop's host never waits for the device on steps that neither log, checkpoint nor
evaluate: no device-to-host transfer and no blocking call there.

JAX's transfer guard is set to disallow on those steps, but on CPU it proves nothing (jax 0.10.2
lets ``float(x)``, ``np.asarray(x)`` and ``x.item()`` through there: CPU buffers are host memory).
So the run is also watched by a detector that records every read
of a ``jax.Array``'s value, every ``block_until_ready`` and every host copy made on the loop's
thread; ``test_the_detector_catches_a_per_step_read`` shows it fails a loop that reads once a step.
"""

import os
import threading

import jax
import numpy as np
import pytest
from jax._src import array as jax_array

from vlpt.config import load_config
from vlpt.train import loop, metrics

from conftest import REPO
from e2e_utils import metrics as read_metrics

ArrayImpl = jax_array.ArrayImpl


class _Watch:
  """Which step the loop is in (by wrapping the jitted step) and every device read made on the
  loop's thread during that step; the transfer guard is set to disallow for quiet steps."""

  def __init__(self, monkeypatch, quiet):
    self.quiet, self.step, self.reads, self._guard = quiet, None, [], None
    thread = threading.main_thread()

    def spy(name, original):
      def wrapper(self_, *args, **kwargs):
        if threading.current_thread() is thread and self.step is not None:
          self.reads.append((self.step, name))
        return original(self_, *args, **kwargs)

      return wrapper

    value = ArrayImpl._value
    monkeypatch.setattr(ArrayImpl, "_value", property(spy("value", value.fget)))
    for name in ("block_until_ready", "copy_to_host_async"):
      monkeypatch.setattr(ArrayImpl, name, spy(name, getattr(ArrayImpl, name)))

    make = loop.make_train_step

    def make_watched(setup, objective):
      step_fn = make(setup, objective)

      def watched(state, batch):
        out = step_fn(state, batch)  # (queued with the previous step's guard)
        self._set_guard(None)
        self.step = (self.step or 0) + 1
        if self.step in self.quiet:
          self._set_guard(jax.transfer_guard_device_to_host("disallow"))
        return out

      return watched

    monkeypatch.setattr(loop, "make_train_step", make_watched)

  def _set_guard(self, guard):
    if self._guard is not None:
      self._guard.__exit__(None, None, None)
    self._guard = guard
    if guard is not None:
      guard.__enter__()

  def close(self):
    self._set_guard(None)
    self.step = None


def _config(total_steps):
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.total_steps = total_steps
  config.log_every_steps = 4
  config.checkpoint_every_steps = 6
  config.eval_every_steps = 9
  config.eval.at_end = False
  config.eval.datasets.heldout.num_examples = 64
  return config


def _run(monkeypatch, config, workdir):
  every = lambda n: {s for s in range(1, config.total_steps + 1) if s % n == 0}  # noqa: E731
  busy = {1, config.total_steps}  # (the first step is waited for once: rates exclude compiling)
  busy |= every(config.log_every_steps) | every(config.checkpoint_every_steps)
  busy |= every(config.eval_every_steps)
  quiet = set(range(1, config.total_steps + 1)) - busy
  watch = _Watch(monkeypatch, quiet)
  try:
    loop.train(config, str(workdir))
  finally:
    watch.close()
  return watch.reads, quiet


def test_quiet_steps_neither_read_nor_wait(monkeypatch, tmp_path):
  config = _config(12)
  reads, quiet = _run(monkeypatch, config, tmp_path / "run")
  assert quiet == {2, 3, 5, 7, 10, 11}
  assert [r for r in reads if r[0] in quiet] == []
  read_steps = {step for step, _ in reads}
  assert {4, 6, 8, 9, 12} <= read_steps  # the detector sees the log, checkpoint and eval reads
  rows = [r for r in read_metrics(tmp_path / "run") if "train/loss" in r]
  assert [r["step"] for r in rows] == [4, 8, 12] and all(np.isfinite(r["train/loss"]) for r in rows)


@pytest.mark.parametrize("read", [np.asarray, float])
def test_the_detector_catches_a_per_step_read(monkeypatch, tmp_path, read):
  """A loop that reads a value every step fails the check above: its quiet steps show reads
  (both reads pass JAX's guard on CPU)."""
  add = metrics.Tally.add

  def add_and_read(self, step_metrics):
    add(self, step_metrics)
    read(step_metrics.loss.total)

  monkeypatch.setattr(metrics.Tally, "add", add_and_read)
  reads, quiet = _run(monkeypatch, _config(5), tmp_path / "run")
  assert quiet == {2, 3}
  assert {step for step, _ in reads} & quiet == quiet
