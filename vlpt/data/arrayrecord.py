"""ArrayRecord files of (image bytes, caption) records: ``arrayrecord:PATTERN``.

Record encoding (what ``vlpt-data build --format arrayrecord`` writes, and what the source reads):
one MessagePack map per record, string keys::

  {"key": "000000042",            # optional, reported with the example
   "image": <bin: encoded JPEG/PNG/WebP bytes>,
   "image_ext": "jpg",            # optional
   "caption": "a photo of ...",
   "captions": ["...", "..."],    # optional: several captions / rewrites to choose from
   "meta": {...}}                 # optional, anything MessagePack holds

Other field names are found as :mod:`vlpt.data.records` describes (``jpg``/``txt`` as
img2dataset names them, a ``{"bytes": ...}`` image struct, ...). Files are written with
``group_size:1`` (one record per chunk), which random access needs to be fast, and without
compression (images are compressed already). A file is read with ``readahead_buffer_size:0``
(random reads) by a reader opened lazily in each worker process. A record whose chunk fails its
checksum, or that is not a MessagePack map, is skipped as ``truncated``.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack

from vlpt.data.records import CorruptRecord, RecordSource

WRITER_OPTIONS = "group_size:1,uncompressed"
READER_OPTIONS = "readahead_buffer_size:0"
SUFFIX = ".array_record"


def encode_record(record: dict[str, Any]) -> bytes:
  """A record dict (str keys; bytes, str, numbers, lists, dicts) -> MessagePack bytes."""
  return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  try:
    record = msgpack.unpackb(data, raw=False, strict_map_key=False)
  except Exception as e:  # noqa: BLE001 - msgpack raises several kinds
    raise CorruptRecord(f"not a MessagePack record: {type(e).__name__}: {e}") from e
  if not isinstance(record, dict):
    raise CorruptRecord(f"a record must be a MessagePack map, got {type(record).__name__}")
  return record


class ArrayRecordSource(RecordSource):
  """Random-access source over ArrayRecord files (picklable: readers reopen in each process)."""

  kind = "arrayrecord"

  def _count(self, path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader
    reader = ArrayRecordReader(path, READER_OPTIONS)
    try:
      if not reader.ok():  # cut short: the footer with the chunk index is gone
        raise OSError("not a readable ArrayRecord file (truncated?)")
      return reader.num_records()
    finally:
      reader.close()

  def _open(self, path: str) -> Any:
    from array_record.python.array_record_module import ArrayRecordReader
    return ArrayRecordReader(path, READER_OPTIONS)

  def _read(self, handle: Any, file: int, row: int) -> dict:
    return decode_record(handle.read([row])[0])


class ArrayRecordShardWriter:
  """Writes records into ``out/{00000..}.array_record``, ``shard_size`` records each.

  The same interface as :class:`vlpt.data.shards.ShardWriter` (``write``, ``close``, ``paths``,
  ``count``), so ``vlpt-data build`` fills either.
  """

  suffix = SUFFIX
  source_kind = "arrayrecord"

  def __init__(self, out_dir: str, shard_size: int = 10000):
    if shard_size < 1:
      raise ValueError(f"shard size must be positive, got {shard_size}")
    self.out_dir = out_dir
    self.shard_size = shard_size
    self.count = 0
    self.paths: list[str] = []
    self._writer = None
    os.makedirs(out_dir, exist_ok=True)

  def write(self, image: bytes, ext: str, caption: str | None, meta: dict | None = None) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter
    shard, row = divmod(self.count, self.shard_size)
    if row == 0:
      self._close_file()
      path = os.path.join(self.out_dir, f"{shard:05d}{SUFFIX}")
      self.paths.append(path)
      self._writer = ArrayRecordWriter(path, WRITER_OPTIONS)
    key = f"{shard:05d}{row:04d}" if self.shard_size <= 10000 else f"{shard:05d}{row:09d}"
    record: dict[str, Any] = {"key": key, "image": image, "image_ext": ext,
                              "caption": caption if caption is not None else ""}
    meta = dict(meta or {})
    captions = meta.pop("captions", None)
    if captions:
      record["captions"] = [str(c) for c in captions]
    if meta:
      record["meta"] = meta
    self._writer.write(encode_record(record))
    self.count += 1
    return key

  def _close_file(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def close(self) -> str:
    from vlpt.data.shards import finish_shards
    self._close_file()
    return finish_shards(self.out_dir, self.paths, SUFFIX)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
