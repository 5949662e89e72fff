"""From process-local numpy batches to global jax arrays, prefetched on a background thread.

The loader remembers the grain iterator state *after the last batch the trainer consumed* (not
after the batches sitting in the prefetch queue), so a checkpoint resumes at exactly the next
unseen batch. With a :class:`vlpt.data.pipeline.SkipCounter` iterator that state also holds the
counts of skipped examples, which :attr:`DeviceLoader.skipped` reports as of the same batch.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from vlpt.sharding import batch_sharding


def to_global(batch: dict[str, np.ndarray], mesh: Mesh, process_count: int) -> dict[str, jax.Array]:
  """Assembles each process's rows into arrays sharded over the mesh's batch axes."""
  out = {}
  for key, local in batch.items():
    global_shape = (local.shape[0] * process_count, *local.shape[1:])
    out[key] = jax.make_array_from_process_local_data(
      batch_sharding(mesh, local.ndim), local, global_shape
    )
  return out


class DeviceLoader:
  """Iterates global device batches; checkpointable through grain's orbax handler."""

  def __init__(self, make_iterator: Callable[[], Any], mesh: Mesh, process_count: int, depth: int = 2):
    self._iterator = make_iterator()
    self._mesh = mesh
    self._process_count = process_count
    self._depth = depth
    self._state = self._iterator.get_state()
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()

  @property
  def skipped(self) -> dict[str, int]:
    """Examples the sources replaced, by reason, through the last batch returned (this process).

    Read from the iterator state paired with that batch (see ``SkipCounter``), so the counts are
    exact at every step, checkpointed with the data state and restored with it.
    """
    state = self._state
    if isinstance(state, dict) and isinstance(state.get("skipped"), dict):
      return dict(state["skipped"])
    return {}

  # -- grain.checkpoint.CheckpointHandler protocol (bytes state for non-grain iterators) --
  def get_state(self) -> bytes:
    return json.dumps(self._state).encode()

  def set_state(self, state: bytes) -> None:
    if self._thread is not None:
      raise RuntimeError("set_state must be called before iteration starts")
    self._state = json.loads(state.decode())
    self._iterator.set_state(self._state)

  def start_prefetch(self) -> None:
    if self._thread is not None:
      return
    self._queue = queue.Queue(maxsize=self._depth)
    self._thread = threading.Thread(target=self._produce, daemon=True, name="vlpt-prefetch")
    self._thread.start()

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self._iterator)
        state = self._iterator.get_state()
        item = (to_global(batch, self._mesh, self._process_count), state)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # surfaced to the consumer
      self._queue.put(e)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    self.start_prefetch()
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    batch, self._state = item
    return batch

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    close = getattr(self._iterator, "close", None)  # stops grain worker processes
    if close is not None:
      close()
