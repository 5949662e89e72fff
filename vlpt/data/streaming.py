"""Streaming order for object storage: each process reads whole shards, in a shuffled order.

Random access (the default) reads every example with its own request: fine on a local disk, one
GET per example on GCS. With ``config.data.train.access = "stream"`` the stream is ordered so that
shards are read whole, sequentially, once per epoch:

- epoch ``e`` permutes the shards (seeded by ``(seed, e)``); process ``p`` of ``P`` takes every
  ``P``-th shard of that order, so processes read disjoint shards that together cover the epoch;
- a process's shards go by in windows of ``stream_window`` shards; the examples of a window are
  permuted (seeded by ``(seed, e, window)``): a shuffle within a window of shards, as
  WebDataset's shuffle buffer, but by index, so it is deterministic;
- a file source (WebDataset, ArrayRecord, Parquet) with a ``cache_dir`` fetches a remote shard
  whole (one sequential read) into a local cache (:class:`vlpt.data.files.ShardCache`) the first
  time any worker needs it, and reads its examples there; each process keeps about three windows
  of shards. A source gives ``shard_counts`` (examples per shard) and ``shard_starts``.

Since element ``k`` of a process's stream is a pure function of ``(seed, k, p, P)``, the iterator
state is still a position: exact resume with or without workers, as in random mode. Changing the
process count changes which process reads which shards (a restart from the step then starts the
new layout at that step, not exactly where the old one was).
"""

from __future__ import annotations

import collections
import sys
import threading

import grain
import numpy as np


class ShardStream(grain.MapDataset):
  """Element ``k`` of process ``p``'s share of ``source``, in streaming order (endless).

  ``source``: random-access, with ``shard_counts`` and ``shard_starts`` (its index's layout).
  :class:`ProcessPositions` turns the process's elements into stream positions, after a mixture
  of several such streams when there is one.
  """

  def __init__(
    self,
    source,
    *,
    seed: int,
    window: int,
    shuffle: bool,
    process_index: int,
    process_count: int,
  ):
    super().__init__()
    counts = np.asarray(source.shard_counts, np.int64)
    if len(counts) < process_count:
      raise ValueError(
        f"streaming needs at least one shard per process: {len(counts)} shard(s) for "
        f"{process_count} processes; use config.data.train.access='random'"
      )
    self._source = source
    self._counts = counts
    self._starts = np.asarray(source.shard_starts, np.int64)
    self._seed, self._window, self._shuffle = int(seed), max(1, int(window)), bool(shuffle)
    self._p, self._P = process_index, process_count
    self._epoch_starts = [0]  # local index where each epoch begins (grown on demand)
    self._epochs: collections.OrderedDict = collections.OrderedDict()
    self._windows: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.RLock()  # read threads share the caches

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_lock")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.RLock()

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"ShardStream(window={self._window}, process={self._p}/{self._P})"

  def _epoch(self, e: int):
    """(this process's shards in epoch ``e``, cumulative starts of its windows, of its shards)."""
    hit = self._epochs.get(e)
    if hit is None:
      n = len(self._counts)
      order = (
        np.random.default_rng([self._seed, 0x5A4D, e]).permutation(n) if self._shuffle else np.arange(n)
      )
      mine = order[self._p :: self._P]
      shard_starts = np.concatenate([[0], np.cumsum(self._counts[mine])])
      window_starts = shard_starts[:: self._window]
      if window_starts[-1] != shard_starts[-1]:
        window_starts = np.append(window_starts, shard_starts[-1])
      hit = self._epochs[e] = (mine, window_starts, shard_starts)
      while len(self._epochs) > 4:
        self._epochs.popitem(last=False)
    return hit

  def _locate_epoch(self, k: int) -> tuple[int, int]:
    while self._epoch_starts[-1] <= k:
      e = len(self._epoch_starts) - 1
      length = int(self._epoch(e)[2][-1])
      if length == 0:
        raise ValueError("this process's shards hold no samples")
      self._epoch_starts.append(self._epoch_starts[-1] + length)
    e = int(np.searchsorted(self._epoch_starts, k, side="right")) - 1
    return e, k - self._epoch_starts[e]

  def _window_order(self, e: int, w: int, length: int) -> np.ndarray | None:
    if not self._shuffle:
      return None
    key = (e, w)
    hit = self._windows.get(key)
    if hit is None:
      hit = self._windows[key] = np.random.default_rng([self._seed, 0x3D1F, e, w]).permutation(length)
      while len(self._windows) > 8:
        self._windows.popitem(last=False)
    return hit

  def example_index(self, k: int) -> int:
    """The source index of element ``k`` of this process's stream."""
    with self._lock:
      return self._example_index(k)

  def _example_index(self, k: int) -> int:
    e, offset = self._locate_epoch(k)
    mine, window_starts, shard_starts = self._epoch(e)
    w = int(np.searchsorted(window_starts, offset, side="right")) - 1
    lo, hi = int(window_starts[w]), int(window_starts[w + 1])
    order = self._window_order(e, w, hi - lo)
    within = lo + (int(order[offset - lo]) if order is not None else offset - lo)
    s = int(np.searchsorted(shard_starts, within, side="right")) - 1
    return int(self._starts[mine[s]] + within - shard_starts[s])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._source[self.example_index(int(index))]


class ProcessPositions(grain.MapDataset):
  """Element ``k`` of this process's own stream -> ``(stream position, element)``.

  The position ``(k // b) * B + p * b + k % b`` (local batch ``b``, global batch ``B``) is the
  one random access gives the same element slot, so per-example random choices are keyed alike.
  """

  def __init__(
    self, parent: grain.MapDataset, *, global_batch: int, process_index: int, process_count: int
  ):
    super().__init__(parent)
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self._global, self._local = global_batch, global_batch // process_count
    self._offset = process_index * self._local

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, j = divmod(int(index), self._local)
    return step * self._global + self._offset + j, self._parent[int(index)]
