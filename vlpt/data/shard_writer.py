"""The base of every shard writer: numbered files of ``shard_size`` samples and ``shards.txt``.

The container formats subclass :class:`ShardSetWriter` (tar in :mod:`vlpt.data.shards`,
ArrayRecord in :mod:`vlpt.data.arrayrecord`, Parquet in :mod:`vlpt.data.parquet`);
:func:`vlpt.data.shards.make_writer` picks one by name. The output directory may be ``gs://``: each
shard is written to a local temporary file and uploaded when full (:mod:`vlpt.storage`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from vlpt import storage


class ShardSetWriter:
  """Base of the shard writers: ``out/{00000..}SUFFIX``, ``shard_size`` samples each.

  ``write`` names each sample ``SSSSSRRRR`` (shard, row) and opens the next file when one is full;
  ``close`` finishes the last file and writes ``shards.txt``. Subclasses say how a file is
  opened, written and closed; ``vlpt-data build`` fills any of them.
  """

  suffix = ""
  source_kind = ""
  record_index = False  # True: close() also writes the set's record-count index (ArrayRecord, Parquet)

  def __init__(self, out_dir: str, shard_size: int = 10000):
    if shard_size < 1:
      raise ValueError(f"shard size must be positive, got {shard_size}")
    self.out_dir = out_dir
    self.shard_size = shard_size
    self.count = 0
    self.paths: list[str] = []
    self.sizes: list[int] = []
    self._file: Any = None
    storage.makedirs(out_dir)
    # a remote shard is written here first, then uploaded whole (GCS has no append)
    self._local_dir = tempfile.mkdtemp(prefix="vlpt-shards-") if storage.is_remote(out_dir) else None

  def write(self, image: bytes, ext: str, caption: str | None, meta: dict | None = None) -> str:
    shard, row = divmod(self.count, self.shard_size)
    if row == 0:
      self._finish_file()
      path = storage.join(self.out_dir, f"{shard:05d}{self.suffix}")
      self.paths.append(path)
      self._file = self._open_file(self._local(path))
    key = f"{shard:05d}{row:04d}" if self.shard_size <= 10000 else f"{shard:05d}{row:09d}"
    self._write_sample(key, image, ext, caption, meta)
    self.count += 1
    return key

  def _finish_file(self) -> None:
    if self._file is not None:
      self._close_file(self._file)
      self._file = None
      self.sizes.append(os.path.getsize(self._local(self.paths[-1])))
      if self._local_dir is not None:
        local = self._local(self.paths[-1])
        storage.upload(local, self.paths[-1])
        os.remove(local)

  def _local(self, path: str) -> str:
    """Where the shard ``path`` is written: itself, or a local file uploaded when complete."""
    return path if self._local_dir is None else os.path.join(self._local_dir, storage.basename(path))

  def close(self) -> str:
    """Closes the last shard; writes ``shards.txt`` and returns the brace pattern of the shards."""
    self._finish_file()
    if self._local_dir is not None:
      shutil.rmtree(self._local_dir, ignore_errors=True)
    if self.record_index and self.paths:
      from vlpt.data import record_index

      counts = [self.shard_size] * (len(self.paths) - 1)
      counts.append(self.count - self.shard_size * (len(self.paths) - 1))
      record_index.write_index(
        record_index.RecordIndex(self.source_kind, self.paths, counts, self.sizes)
      )
    return finish_shards(self.out_dir, self.paths, self.suffix)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _open_file(self, path: str) -> Any:
    raise NotImplementedError

  def _write_sample(
    self, key: str, image: bytes, ext: str, caption: str | None, meta: dict | None
  ) -> None:
    raise NotImplementedError

  def _close_file(self, handle: Any) -> None:
    handle.close()


def shard_pattern(out_dir: str, n: int, suffix: str = ".tar") -> str:
  if n == 1:
    return storage.join(out_dir, f"00000{suffix}")
  return storage.join(out_dir, f"{{00000..{n - 1:05d}}}{suffix}")


def finish_shards(out_dir: str, paths: list[str], suffix: str) -> str:
  """Writes ``out_dir/shards.txt`` (one file name a line); returns the brace pattern."""
  storage.write_text(
    storage.join(out_dir, "shards.txt"), "".join(storage.basename(p) + "\n" for p in paths)
  )
  return shard_pattern(out_dir, len(paths), suffix)
