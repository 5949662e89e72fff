"""What every file-backed training source shares: shard lists, skip reasons, robust reads.

Shard lists (:func:`expand_shards`): brace patterns ``dir/{00000..00009}.tar`` (zero-padded
ranges; also ``{a,b}`` lists), globs, a text file with one path per line (relative to the file),
several joined by ``::``.

Robustness (:class:`RobustSource`): a random-access source cannot drop an index, so an unusable
example (undecodable image, empty or missing caption, a member cut off by a truncated file) is
replaced by the next usable one, deterministically. Every example carries ``skips``, the number of
unusable examples passed over to reach it by reason (:data:`SKIP_REASONS`), which the trainer sums
into ``data/skipped_<reason>``. If more than ``max_bad_fraction`` of the examples this process
read are bad (checked after ``min_reads`` reads), :class:`~vlpt.errors.DataError` names the worst
shard.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np

from vlpt import storage
from vlpt.data import record_index, wds_index
from vlpt.errors import DataError

SKIP_REASONS = ("undecodable_image", "empty_caption", "truncated")


def _expand_braces(pattern: str) -> list[str]:
  m = re.search(r"\{([^{}]*)\}", pattern)
  if not m:
    return [pattern]
  head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
  r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if r:
    lo, hi = r.group(1), r.group(2)
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    options = body.split(",")
  return [p for option in options for p in _expand_braces(head + option + tail)]


def expand_shards(spec: str) -> list[str]:
  """A shard spec (braces, globs, ``.txt`` list files, ``::``-joined) -> shard paths, in order."""
  paths: list[str] = []
  for part in filter(None, spec.split("::")):
    if part.endswith((".txt", ".shards")) and storage.isfile(part):
      base = storage.split(storage.resolve(part))[0]
      for line in storage.read_text(part).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
          absolute = os.path.isabs(line) or storage.is_remote(line)
          paths.extend(expand_shards(line if absolute else storage.join(base, line)))
      continue
    for p in _expand_braces(part):
      if any(ch in p for ch in "*?["):
        paths.extend(storage.glob(p))
      else:
        paths.append(p)
  return paths


def check_files_exist(spec: str) -> None:
  """A ``wds:`` / ``arrayrecord:`` / ``parquet:`` spec whose shards are all present."""
  kind, _, pattern = spec.partition(":")
  index_module = wds_index if kind == "wds" else record_index
  if pattern.endswith(index_module.SUFFIX):  # an index that names its shards
    if not storage.isfile(pattern):
      raise ValueError(f"data source {spec!r}: the index {pattern} does not exist")
    return
  paths = expand_shards(pattern)
  if paths and index_module.find_index(paths):
    return  # indexed: a missing shard shows when read, not as a stat of every file
  if paths and storage.is_remote(paths[0]):  # a request per object: the ends of the list
    paths = paths[:1] + paths[-1:]
  missing = [p for p in paths if not storage.isfile(p)]
  if not paths or missing:
    raise ValueError(
      f"data source {spec!r}: "
      + (
        f"{missing[0]} does not exist ({len(missing)} of {len(paths)} shard(s) missing)"
        if missing
        else "no shard matches"
      )
    )


class RobustSource:
  """Replacement of unusable examples by the next usable one, with counts and a bad-fraction cap.

  Subclasses implement ``_load(index) -> (example or None, reason, where)``.
  """

  def __init__(self, *, max_bad_fraction: float = 0.1, min_reads: int = 256):
    self.max_bad_fraction = float(max_bad_fraction)
    self.min_reads = int(min_reads)
    self._reset_counters()

  def _reset_counters(self) -> None:
    self._lock = threading.Lock()
    self.reads = 0
    self.bad = 0
    self.skipped = dict.fromkeys(SKIP_REASONS, 0)
    self.bad_by_where: dict[str, int] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_lock", None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _load(self, index: int) -> tuple[dict | None, str, str]:
    raise NotImplementedError

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    n = len(self)
    if not 0 <= index < n:
      raise IndexError(f"index {index} out of range for {n} examples")
    skips = np.zeros(len(SKIP_REASONS), np.int32)
    for attempt in range(n):
      example, reason, where = self._load((index + attempt) % n)
      with self._lock:
        self.reads += 1
        if example is None:
          self.bad += 1
          self.skipped[reason] += 1
          self.bad_by_where[where] = self.bad_by_where.get(where, 0) + 1
        self._check()
      if example is not None:
        example["skips"] = skips
        return example
      skips[SKIP_REASONS.index(reason)] += 1
    raise DataError(f"{self!r}: no usable example at all (reasons: {self.skipped})")

  def _check(self) -> None:
    if self.reads >= self.min_reads and self.bad > self.max_bad_fraction * self.reads:
      where, count = max(self.bad_by_where.items(), key=lambda kv: kv[1])
      raise DataError(
        f"{self.bad} of {self.reads} examples read were unusable ({self.bad / self.reads:.1%} > "
        f"config.data.max_bad_fraction={self.max_bad_fraction}); worst shard: {where} "
        f"({count} bad); reasons: {', '.join(f'{k}={v}' for k, v in self.skipped.items() if v)}. "
        f"Check it with `vlpt-data inspect {where}`"
      )


class ShardCache:
  """Local copies of remote shards, each fetched whole with one sequential read (streaming, and
  formats whose reader opens only local files).

  The first process on the host that needs a shard downloads it (a lock file keeps the others
  waiting, then they share the copy). A process forgets, and deletes, the oldest shards it fetched
  beyond ``keep``, calling ``on_evict(path)`` first so its owner can close what it holds open; a
  process that still reads an evicted copy keeps its open file, a later one fetches it again.
  Picklable: a worker process starts with an empty list of its own fetches.
  """

  def __init__(self, directory: str, keep: int = 16, suffix: str = ""):
    self.directory, self.keep, self.suffix = directory, max(1, int(keep)), suffix
    self._fetched: list[str] = []

  def __getstate__(self):
    return {**self.__dict__, "_fetched": []}

  def local_name(self, path: str) -> str:
    import hashlib

    return os.path.join(self.directory, hashlib.sha1(path.encode()).hexdigest()[:20] + self.suffix)

  def fetch(self, path: str, key=None, on_evict=None) -> str:
    """The local copy of remote ``path`` (downloaded now if no process on the host has it).

    ``key`` (default: the path) names the shard to ``on_evict(key)`` when its copy is dropped.
    """
    import fcntl
    import shutil

    os.makedirs(self.directory, exist_ok=True)
    local = self.local_name(path)
    with open(local + ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(local):
        part = f"{local}.{os.getpid()}.part"
        with storage.open_read(path) as src, open(part, "wb") as dst:
          shutil.copyfileobj(src, dst, 8 << 20)
        os.replace(part, local)
    entry = (path if key is None else key, path)
    if entry in self._fetched:
      self._fetched.remove(entry)
    self._fetched.append(entry)
    while len(self._fetched) > self.keep:
      old_key, old = self._fetched.pop(0)
      if on_evict is not None:
        on_evict(old_key)
      for victim in (self.local_name(old), self.local_name(old) + ".lock"):
        try:
          os.remove(victim)
        except OSError:
          pass
    return local
