"""The record-count index of ArrayRecord and Parquet file sets: ``vlpt-data index arrayrecord:PATTERN``.

Both formats keep their own index in each file's footer, so a source over N files used to open N
footers at every start: at LAION scale (41,456 files) minutes on a disk, a request or two per file
on GCS, and a whole download per file for ArrayRecord on GCS (its reader opens only local files).
This index holds what a start needs, per file: the record count and the byte size (a file whose
size changed makes the index stale). What only reading needs (Parquet's row groups and columns)
comes from a file's footer when a process first opens it, so a process's memory grows with the
files it reads, not the set.

The file is JSON (a few dozen bytes per file), written beside the files (:func:`default_index_path`:
a hash of the file list, so training over the same pattern finds it) or at a given path, local or
``gs://``; ``vlpt-data build --format arrayrecord|parquet`` writes it with the files. A spec may
name the index itself (``arrayrecord:PATH.recindex``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from vlpt import storage
from vlpt.data.wds_index import absolute_name, default_index_path, relative_name

log = logging.getLogger(__name__)

SUFFIX = ".recindex"
VERSION = 1


class RecordIndex:
  """A set's files with their record counts and sizes (count 0: unreadable when indexed)."""

  def __init__(self, kind: str, paths: Sequence[str], counts, sizes, unreadable=(), path=None):
    self.kind, self.paths, self.path = kind, list(paths), path
    self.counts = [int(c) for c in counts]
    self.sizes = [int(s) for s in sizes]
    self.unreadable = dict(unreadable)  # file -> why, when indexed


def index_path_for(paths: Sequence[str]) -> str:
  """Where the index of exactly these files goes by default (beside the first one)."""
  return default_index_path(paths, SUFFIX)


def find_index(paths: Sequence[str]) -> str | None:
  """The index written for exactly these files, if it exists."""
  path = index_path_for(paths)
  return path if storage.isfile(path) else None


def write_index(index: RecordIndex, out: str | None = None) -> str:
  """Writes ``index`` (local or ``gs://``); returns its path."""
  out = storage.resolve(out) if out else index_path_for(index.paths)
  folder = storage.split(out)[0]
  body = {
    "version": VERSION,
    "kind": index.kind,
    "files": [relative_name(p, folder) for p in index.paths],
    "counts": index.counts,
    "sizes": index.sizes,
    "unreadable": {relative_name(p, folder): why for p, why in index.unreadable.items()},
  }
  storage.write_text(out, json.dumps(body, separators=(",", ":")))
  return out


def read_index(path: str, kind: str) -> RecordIndex:
  """Reads an index written for a ``kind`` set (a clear error for anything else)."""
  path = storage.resolve(path)
  try:
    body = json.loads(storage.read_text(path))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a vlpt record index ({e})") from None
  if not isinstance(body, dict) or body.get("version") != VERSION:
    raise ValueError(f"{path}: not a vlpt record index of version {VERSION}; rewrite it")
  if body.get("kind") != kind:
    raise ValueError(f"{path} indexes {body.get('kind')} files, not {kind}")
  folder = storage.split(path)[0]
  return RecordIndex(
    kind,
    [absolute_name(f, folder) for f in body["files"]],
    body["counts"],
    body["sizes"],
    {absolute_name(f, folder): why for f, why in body.get("unreadable", {}).items()},
    path=path,
  )


def local_copy_count(path: str, count_local: Callable[[str], int]) -> int:
  """``count_local`` of a remote file downloaded to a temporary file (for readers that open only
  local files)."""
  if not storage.is_remote(path):
    return count_local(path)
  fd, local = tempfile.mkstemp(prefix="vlpt-count-")
  os.close(fd)
  try:
    storage.download(path, local)
    return count_local(local)
  finally:
    os.remove(local)


def index_files(
  kind: str, paths: Sequence[str], count: Callable[[str], int], threads: int = 16
) -> RecordIndex:
  """Counts every file's records (``count(path)``, raising on an unreadable file) and sizes."""

  def one(path: str):
    try:
      return int(count(path)), storage.file_size(path), None
    except Exception as e:  # noqa: BLE001 - each library raises its own kinds
      size = storage.file_size(path) if storage.exists(path) else -1
      return 0, size, f"{type(e).__name__}: {e}"[:200]

  paths = list(paths)
  with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
    results = list(pool.map(one, paths))
  unreadable = {p: why for p, (_, _, why) in zip(paths, results) if why}
  return RecordIndex(kind, paths, [r[0] for r in results], [r[1] for r in results], unreadable)
