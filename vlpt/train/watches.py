"""What the loop watches besides the steps: a request to stop (preemption) and runs that keep
producing non-finite steps."""

from __future__ import annotations

import itertools
import os
import signal
import sys

import jax

from vlpt.errors import TrainingError

_WATCHES = itertools.count()  # (each watch's keys in the coordination service apart)
_WAIT_MS = 30 * 60 * 1000  # how long a check waits for a peer's flag (a peer that died ends the
# job sooner: the coordination service's heartbeats)


class PreemptionWatch:
  """SIGTERM (preemption, time limits, ``launch/local.py`` forwarding) or Ctrl-C (SIGINT) -> a
  clean stop.

  The handler only sets a flag. One process reads it after every step. Several processes must
  stop at the same step, and a collective after every step would make every host wait for its
  device; so they agree only at *check steps* (:meth:`should_stop` with ``check=True``: every
  ``config.preemption_check_every_steps``, log and checkpoint step, the same steps everywhere),
  through JAX's coordination service (a key-value store on the coordinator; no device, no
  transfer). At a check step each process posts its flag and reads the flags every process posted
  at the *previous* check step: all read the same flags, so all stop at the same step, and a host
  waits only for a peer more than one check interval behind it. A request is honoured within
  two check intervals.

  A second Ctrl-C exits at once (exit 130): checkpoints are written to a temporary directory and
  renamed when complete, so an interrupted save leaves the previous checkpoint as the latest, and
  the next run resumes there.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.reason = "a stop request"  # (from another process, when this one saw no signal)
    self._tpu = jax.devices()[0].platform == "tpu" and jax.process_count() > 1
    self._prefix = f"vlpt/stop/{next(_WATCHES)}"
    self._checks: list[int] = []  # this run's check steps so far
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

  def should_stop(self, step: int, *, check: bool) -> bool:
    """Whether every process stops after ``step``; ``check``: a check step (see the class)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    # TPU maintenance events reach JAX's preemption notifier, which answers at a step all
    # processes agree on (a local query; not simulated here: CPU and GPU runs rely on SIGTERM)
    if self._tpu and multihost_utils.reached_preemption_sync_point(step):
      return True
    if not check:
      return False
    from jax._src import distributed

    client = distributed.global_state.client
    me = jax.process_index()
    client.key_value_set(f"{self._prefix}/{step}/{me}", self.reason if self.requested else "-")
    self._checks.append(step)
    if len(self._checks) < 2:
      return False
    previous = self._checks[-2]
    posted = dict(client.key_value_dir_get(f"{self._prefix}/{previous}/"))
    flags = []
    for peer in range(jax.process_count()):
      key = f"{self._prefix}/{previous}/{peer}"
      flags.append(posted[key] if key in posted else client.blocking_key_value_get(key, _WAIT_MS))
    if len(self._checks) > 3:  # every peer has read it: each posted `previous` after reading it
      client.key_value_delete(f"{self._prefix}/{self._checks.pop(0)}/{me}")
    for peer, flag in enumerate(flags):
      if flag != "-":
        self.reason = flag if peer == me else f"{flag} (to process {peer})"
        return True
    return False

  def restore(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)


class NonFiniteWatch:
  """Too many skipped (non-finite) steps in a row stop the run with an error.

  The streak is counted on device (:class:`vlpt.train.metrics.Tally`, which records the step at
  which it reached the limit) and read only at log and checkpoint steps, so the host never waits
  for a step to learn it: the run stops at the first such step after the limit was reached,
  before that step's checkpoint is written.
  """

  def __init__(self, limit: int):
    self.limit = limit

  def check(self, limit_reached_at: int, step: int) -> None:
    """``limit_reached_at``: the step the streak reached the limit (0: never); ``step``: now."""
    if limit_reached_at <= 0:
      return
    noticed = (
      "" if step == limit_reached_at else f"; noticed at step {step}, the next log or checkpoint step"
    )
    raise TrainingError(
      f"{self.limit} consecutive training steps had a non-finite loss or gradient "
      f"(the last at step {limit_reached_at}{noticed}); their updates were skipped and the run "
      "stops here. The last checkpoint is intact: lower the learning rate or inspect the data, "
      "then resume (config.max_consecutive_nonfinite sets the limit)"
    )
