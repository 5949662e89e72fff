"""The WebDataset index: where every sample's members lie in a set of tar shards, in one file.

Scanning tar headers costs one pass over every shard (at LAION-400M, 41,456 shards and 1.2 billion
members); ``vlpt-data index PATTERN`` does it once and writes the result next to the shards
(:func:`default_index_path`) or to a given path, local or ``gs://``. A training process then reads
only the file's head: the shard names and per-shard counts (memory grows with shards, not
samples); per-sample records are read when used: locally one small ``pread`` per sample (the
page cache, shared by every process and worker on the host, holds the file; nothing accumulates
in a process), on GCS one ranged read of a shard's whole table, kept in a small LRU. Pickling a
:class:`ShardTables` (grain workers) sends the index's path and the small head, never tables.

File layout (little-endian)::

  b"VLPTWDS1" | u64 head length | head JSON | padding to 64 | records of shard 0 | shard 1 | ...

The head holds ``shards`` (names relative to the index's folder when under it), ``counts``,
``sizes`` (bytes; a changed shard means a stale index), ``truncated`` (shard cut short),
``missing_image`` (keys without an image member) and ``long_keys`` (the rare keys that the tar
header right before the image cannot give). A record (:data:`RECORD`, 25 bytes) holds the 512-byte
block where each member's data starts (tar data is block-aligned) and its size (-1: absent), and
flags: the image extension and whether a member runs past the end of the file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import mmap
import os
import posixpath
import struct
import tarfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vlpt import storage
from vlpt.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAGIC = b"VLPTWDS1"
SUFFIX = ".wdsindex"
BLOCK = 512
RECORD = np.dtype(
  [
    ("image", "<u4"),  # block of the image's data
    ("image_size", "<u4"),
    ("txt", "<u4"),
    ("txt_size", "<i4"),  # -1: no member
    ("json", "<u4"),
    ("json_size", "<i4"),
    ("flags", "u1"),  # bits 0-1: IMAGE_EXTS index; 2: a member is cut off; 3: key in long_keys
  ]
)
TRUNCATED, LONG_KEY = 4, 8


class StaleIndex(DataError):
  """The index does not describe the shards as they are (sizes differ, or shards moved)."""


def _split_name(name: str) -> tuple[str, str]:
  directory, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return os.path.join(directory, stem) if directory else stem, ext.lower() if dot else ""


def key_from_header(header: bytes) -> str:
  """The sample key of a member from its 512-byte ustar header (name and prefix fields)."""
  name = header[:100].split(b"\0", 1)[0]
  if header[257:262] == b"ustar":
    prefix = header[345:500].split(b"\0", 1)[0]
    if prefix:
      name = prefix + b"/" + name
  return _split_name(name.decode("utf-8", "surrogateescape"))[0]


class ShardScan:
  """One shard's table (:data:`RECORD` rows) and what was wrong with it."""

  __slots__ = ("table", "truncated", "missing_image", "long_keys", "size")

  def __init__(self, table, truncated, missing_image, long_keys, size):
    self.table, self.truncated, self.missing_image = table, truncated, missing_image
    self.long_keys, self.size = long_keys, size


def scan_shard(path: str) -> ShardScan:
  """Reads one tar's headers (no member data; sequential reads ahead on GCS)."""
  size = storage.file_size(path)
  samples: dict[str, dict[str, Any]] = {}
  order: list[str] = []
  truncated = False
  with storage.open_read(path, block_size=1 << 20) as f:
    try:
      with tarfile.open(fileobj=f, mode="r:") as tf:
        while True:
          try:
            member = tf.next()
          except (tarfile.ReadError, EOFError, OSError):
            truncated = True
            break
          if member is None:
            # no end-of-archive marker (two zero blocks) after the last member: cut at a boundary
            if tf.offset + 2 * BLOCK > size:
              truncated = True
            break
          if not member.isfile():
            continue
          key, ext = _split_name(member.name)
          if key not in samples:
            samples[key] = {}
            order.append(key)
          cut = member.offset_data + member.size > size
          plain = member.offset_data - member.offset == BLOCK  # no pax / GNU long-name headers
          samples[key][ext] = (member.offset_data, member.size, cut, plain)
          if cut:
            truncated = True
            break
    except tarfile.ReadError:  # not even a first header
      truncated = True
  rows, long_keys, missing = [], {}, 0
  for key in order:
    members = samples[key]
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
      missing += 1
      continue
    image = members[ext]
    flags = IMAGE_EXTS.index(ext) | (TRUNCATED if any(m[2] for m in members.values()) else 0)
    if not image[3]:  # pax / GNU long-name headers: the ustar name may be cut short
      flags |= LONG_KEY
      long_keys[len(rows)] = key
    txt, js = members.get("txt"), members.get("json")
    rows.append(
      (
        image[0] // BLOCK,
        image[1],
        txt[0] // BLOCK if txt else 0,
        txt[1] if txt else -1,
        js[0] // BLOCK if js else 0,
        js[1] if js else -1,
        flags,
      )
    )
  return ShardScan(np.array(rows, RECORD), truncated, missing, long_keys, size)


def scan_shards(paths: Sequence[str], threads: int = 8) -> list[ShardScan]:
  if len(paths) <= 1:
    return [scan_shard(p) for p in paths]
  with ThreadPoolExecutor(min(threads, len(paths))) as pool:
    return list(pool.map(scan_shard, paths))


# ---------------------------------------------------------------------------------------------
# the index file


def default_index_path(paths: Sequence[str], suffix: str = SUFFIX) -> str:
  """Where ``vlpt-data index`` puts the index of exactly these shards: beside the first one,
  named by a hash of the shard list (another list of the same folder gets its own file)."""
  digest = hashlib.sha1("\n".join(storage.resolve(p) for p in paths).encode()).hexdigest()[:16]
  return storage.join(storage.split(storage.resolve(paths[0]))[0], f"vlpt-{digest}{suffix}")


def relative_name(path: str, folder: str) -> str:
  path = storage.resolve(path)
  prefix = folder.rstrip("/") + "/"
  return path[len(prefix) :] if path.startswith(prefix) else path


def absolute_name(name: str, folder: str) -> str:
  if storage.is_remote(name) or os.path.isabs(name):
    return name
  return posixpath.join(folder, name) if storage.is_remote(folder) else os.path.join(folder, name)


def encode_index(paths: Sequence[str], scans: Sequence[ShardScan], out: str) -> bytes:
  folder = storage.split(storage.resolve(out))[0]
  head = {
    "version": 1,
    "record": RECORD.descr,
    "shards": [relative_name(p, folder) for p in paths],
    "counts": [len(s.table) for s in scans],
    "sizes": [int(s.size) for s in scans],
    "truncated": [i for i, s in enumerate(scans) if s.truncated],
    "missing_image": int(sum(s.missing_image for s in scans)),
    "long_keys": {
      str(i): {str(r): k for r, k in s.long_keys.items()} for i, s in enumerate(scans) if s.long_keys
    },
  }
  blob = json.dumps(head, separators=(",", ":")).encode()
  start = len(MAGIC) + 8 + len(blob)
  pad = -start % 64
  return b"".join(
    [MAGIC, struct.pack("<Q", len(blob)), blob, b"\0" * pad, *(s.table.tobytes() for s in scans)]
  )


def write_index(paths: Sequence[str], out: str | None = None, threads: int = 8) -> tuple[str, int]:
  """Scans the shards and writes their index (local or ``gs://``); returns (path, samples)."""
  out = storage.resolve(out) if out else default_index_path(paths)
  scans = scan_shards(list(paths), threads)
  storage.write_bytes(out, encode_index(paths, scans, out))
  return out, int(sum(len(s.table) for s in scans))


def write_index_file(out: str, shards: Sequence[str], counts: np.ndarray, tables, sizes=None) -> None:
  """Writes an index from given tables (``tables``: an iterable of :data:`RECORD` arrays in shard
  order, written as they come, so a very large index never sits in memory whole). Local only."""
  folder = storage.split(storage.resolve(out))[0]
  head = {
    "version": 1,
    "record": RECORD.descr,
    "shards": [relative_name(p, folder) for p in shards],
    "counts": [int(c) for c in counts],
    "sizes": [int(s) for s in sizes] if sizes is not None else None,
    "truncated": [],
    "missing_image": 0,
    "long_keys": {},
  }
  blob = json.dumps(head, separators=(",", ":")).encode()
  pad = -(len(MAGIC) + 8 + len(blob)) % 64
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(MAGIC + struct.pack("<Q", len(blob)) + blob + b"\0" * pad)
    for table, count in zip(tables, counts):
      if len(table) != count or table.dtype != RECORD:
        raise ValueError(f"a table of {len(table)} {table.dtype} rows for a count of {count}")
      f.write(table.tobytes())
  os.replace(tmp, out)


class ShardTables:
  """Per-shard counts up front, per-sample tables on demand: from an index file or a scan.

  ``table(i)`` is shard ``i``'s :data:`RECORD` array. Picklable cheaply: an index-backed instance
  sends its path and head; the mmap or the remote LRU is rebuilt in each process.
  """

  def __init__(self, paths, counts, *, index_path=None, data_offset=0, scans=None, sizes=None, **meta):
    self.paths = list(paths)
    self.counts = np.asarray(counts, np.int64)
    self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
    self.index_path = index_path
    self.data_offset = int(data_offset)
    self.sizes = sizes
    self.truncated = list(meta.get("truncated", ()))
    self.missing_image = int(meta.get("missing_image", 0))
    self.long_keys = meta.get("long_keys", {})
    self._scans = scans  # in-memory tables of a scan (no index file)
    self._init_local()

  def _init_local(self) -> None:
    self._lock = threading.Lock()
    self._map = None
    self._lru: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._checked: set[int] = set()
    self._fd, self._pid = None, os.getpid()

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ("_lock", "_map", "_lru", "_checked", "_fd", "_pid"):
      state.pop(key)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_local()

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def num_samples(self) -> int:
    return int(self.starts[-1])

  def locate(self, index: int) -> tuple[int, int]:
    """Sample ``index`` of the set -> (shard, row)."""
    shard = int(np.searchsorted(self.starts, index, side="right")) - 1
    return shard, int(index - self.starts[shard])

  def key(self, shard: int, row: int) -> str | None:
    """The key when the index keeps it (else it is read from the image's tar header)."""
    return self.long_keys.get(str(shard), {}).get(str(row))

  def record(self, shard: int, row: int) -> np.void:
    """Sample ``row`` of ``shard``: locally one 25-byte ``pread`` (the page cache is shared by
    every process on the host, and nothing accumulates in this one), else from the shard's table."""
    if self._scans is not None or storage.is_remote(self.index_path):
      return self.table(shard)[row]
    if self._fd is None or self._pid != os.getpid():
      with self._lock:
        if self._fd is None or self._pid != os.getpid():
          self._fd, self._pid = os.open(self.index_path, os.O_RDONLY), os.getpid()
    if shard not in self._checked:
      self._check_size(shard)
    offset = self.data_offset + (int(self.starts[shard]) + row) * RECORD.itemsize
    return np.frombuffer(os.pread(self._fd, RECORD.itemsize, offset), RECORD)[0]

  def table(self, shard: int) -> np.ndarray:
    if self._scans is not None:
      return self._scans[shard].table
    lo, n = int(self.starts[shard]), int(self.counts[shard])
    if not storage.is_remote(self.index_path):
      if self._map is None:
        with self._lock:
          if self._map is None:
            with open(self.index_path, "rb") as f:
              self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
      if shard not in self._checked:
        self._check_size(shard)
      return np.frombuffer(self._map, RECORD, n, self.data_offset + lo * RECORD.itemsize)
    with self._lock:
      hit = self._lru.get(shard)
      if hit is not None:
        self._lru.move_to_end(shard)
        return hit
    data = storage.read_range(
      self.index_path, self.data_offset + lo * RECORD.itemsize, n * RECORD.itemsize
    )
    table = np.frombuffer(data, RECORD, n)
    with self._lock:
      self._lru[shard] = table
      while len(self._lru) > 256:
        self._lru.popitem(last=False)
    return table

  def _check_size(self, shard: int) -> None:
    """A local shard whose size changed since indexing makes the index stale (cheap ``stat``)."""
    self._checked.add(shard)
    path = self.paths[shard]
    if self.sizes is None or storage.is_remote(path):
      return
    try:
      size = os.path.getsize(path)
    except OSError:
      return  # read errors surface as truncated samples
    if size != self.sizes[shard]:
      raise StaleIndex(
        f"{path} is {size} bytes, the index {self.index_path} says {self.sizes[shard]}: rewrite "
        f"it with `vlpt-data index`"
      )

  def close(self) -> None:
    if self._fd is not None and self._pid == os.getpid():
      os.close(self._fd)
    self._fd = None
    if self._map is not None:
      try:
        self._map.close()
      except BufferError:  # views still alive; the mapping goes with them
        pass
      self._map = None


def read_index(path: str) -> ShardTables:
  """Opens an index file: reads its head only (a few bytes per shard)."""
  path = storage.resolve(path)
  first = storage.read_range(path, 0, 1 << 16)
  if first[:8] != MAGIC:
    raise ValueError(f"{path} is not a vlpt WebDataset index")
  (length,) = struct.unpack("<Q", first[8:16])
  blob = first[16 : 16 + length]
  if len(blob) < length:
    blob = storage.read_range(path, 16, length)
  head = json.loads(blob)
  if [tuple(x) for x in head["record"]] != [tuple(x) for x in RECORD.descr]:
    raise ValueError(f"{path}: an index of another version; rewrite it with `vlpt-data index`")
  folder = storage.split(path)[0]
  data_offset = 16 + length + (-(16 + length) % 64)
  return ShardTables(
    [absolute_name(s, folder) for s in head["shards"]],
    head["counts"],
    index_path=path,
    data_offset=data_offset,
    sizes=head.get("sizes"),
    truncated=head.get("truncated", ()),
    missing_image=head.get("missing_image", 0),
    long_keys=head.get("long_keys", {}),
  )


def scanned_tables(paths: Sequence[str], threads: int = 8) -> ShardTables:
  """Tables from scanning the shards now (no index): says what the scan costs at this size."""
  paths = list(paths)
  t0 = time.perf_counter()
  first = scan_shards(paths[:1])
  per_shard = time.perf_counter() - t0
  if len(paths) > 1:
    estimate = per_shard * len(paths) / min(threads, len(paths))
    log.warning(
      "no WebDataset index for these %d shards (expected at %s): scanning every tar header now, "
      "~%.0f s at %.2f s per shard; `vlpt-data index PATTERN` writes the index once and starts "
      "take seconds",
      len(paths),
      default_index_path(paths),
      estimate,
      per_shard,
    )
  scans = first + scan_shards(paths[1:], threads)
  return ShardTables(
    paths,
    [len(s.table) for s in scans],
    scans=scans,
    truncated=[i for i, s in enumerate(scans) if s.truncated],
    missing_image=sum(s.missing_image for s in scans),
    long_keys={
      str(i): {str(r): k for r, k in s.long_keys.items()} for i, s in enumerate(scans) if s.long_keys
    },
  )


def find_index(spec_paths: Sequence[str]) -> str | None:
  """The index written for exactly these shards, if it exists."""
  path = default_index_path(spec_paths)
  return path if storage.isfile(path) else None
