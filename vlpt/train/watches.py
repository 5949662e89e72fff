"""What the loop watches besides the steps: a request to stop (preemption) and runs that keep
producing non-finite steps."""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np

from vlpt.errors import TrainingError


class PreemptionWatch:
  """SIGTERM (preemption, time limits, ``launch/local.py`` forwarding) -> a clean stop.

  The handler only sets a flag; every step the processes agree (an all-gather of the flags) so
  all of them checkpoint the same step and exit 0 together.
  """

  def __init__(self):
    self.requested = False
    self._tpu = jax.devices()[0].platform == "tpu" and jax.process_count() > 1
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
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
    signal.signal(signal.SIGTERM, self._previous)


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
