"""What the loop watches besides the steps: a request to stop (preemption) and runs that keep
producing non-finite steps."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import jax
import numpy as np

from vlpt.errors import TrainingError


class PreemptionWatch:
  """SIGTERM (preemption, time limits, ``launch/local.py`` forwarding) or Ctrl-C (SIGINT) -> a
  clean stop.

  The handler only sets a flag; every step the processes agree (an all-gather of the flags) so
  all of them checkpoint the same step and exit 0 together. A second Ctrl-C exits at once (exit
  130): checkpoints are written to a temporary directory and renamed when complete, so an
  interrupted save leaves the previous checkpoint as the latest, and the next run resumes there.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.reason = "a stop request"  # (from another process, when this one saw no signal)
    self._tpu = jax.devices()[0].platform == "tpu" and jax.process_count() > 1
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.requested:
      print(
        "\n[vlpt] second Ctrl-C: exiting now, without a checkpoint of this step (the last "
        "saved checkpoint stays the latest; rerun to resume from it)",
        file=sys.stderr,
        flush=True,
      )
      os._exit(130)
    if signum == signal.SIGINT and jax.process_index() == 0:
      print(
        "\n[vlpt] Ctrl-C: checkpointing at the next step, then exiting (Ctrl-C again to exit at once)",
        file=sys.stderr,
        flush=True,
      )
    self.reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    self.requested = True

  def agreed_to_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    if bool(np.any(flags)):
      return True
    # TPU maintenance events reach JAX's preemption notifier, which answers at a step all
    # processes agree on (not simulated here: CPU and GPU runs rely on SIGTERM alone)
    return self._tpu and multihost_utils.reached_preemption_sync_point(step)

  def restore(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)


class NonFiniteWatch:
  """Counts skipped (non-finite) steps; too many in a row stop the run with an error.

  Each step's flag is read one step late, so the host never waits for the step it just queued.
  """

  def __init__(self, limit: int):
    self.limit, self.streak, self.interval = limit, 0, 0
    self._pending = None

  def _settle(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    if float(metrics.skipped_nonfinite.total) > 0:
      self.streak += 1
      self.interval += 1
      if self.streak >= self.limit:
        raise TrainingError(
          f"{self.streak} consecutive training steps had a non-finite loss or gradient "
          f"(the last at step {step}); their updates were skipped and the run stops here. The "
          "last checkpoint is intact: lower the learning rate or inspect the data, then resume "
          "(config.max_consecutive_nonfinite sets the limit)"
        )
    else:
      self.streak = 0

  def observe(self, step: int, metrics: Any) -> None:
    self._settle()
    self._pending = (step, metrics)

  def take_interval_count(self) -> int:
    self._settle()
    count, self.interval = self.interval, 0
    return count
