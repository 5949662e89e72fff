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

ArrayRecord's reader opens local files only: files on ``gs://`` are fetched whole into the shard
cache (:class:`vlpt.data.files.ShardCache`) when first read, which suits streaming
(``config.data.train.access='stream'``) and small evaluation sets; random access over a large
remote set would fetch every file on every host (validation refuses it for training).
"""

from __future__ import annotations

from typing import Any

import msgpack

from vlpt.data.records import CorruptRecord, RecordSource
from vlpt.data.shard_writer import ShardSetWriter

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
  local_only = True  # the C++ reader opens local paths: remote files go through the shard cache

  @staticmethod
  def count_file(path: str) -> int:
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


class ArrayRecordShardWriter(ShardSetWriter):
  """Writes MessagePack records into ``out/{00000..}.array_record``, ``shard_size`` each."""

  suffix = SUFFIX
  record_index = True
  source_kind = "arrayrecord"

  def _open_file(self, path: str) -> Any:
    from array_record.python.array_record_module import ArrayRecordWriter

    return ArrayRecordWriter(path, WRITER_OPTIONS)

  def _write_sample(self, key, image, ext, caption, meta) -> None:
    record: dict[str, Any] = {
      "key": key,
      "image": image,
      "image_ext": ext,
      "caption": caption if caption is not None else "",
    }
    meta = dict(meta or {})
    captions = meta.pop("captions", None)
    if captions:
      record["captions"] = [str(c) for c in captions]
    if meta:
      record["meta"] = meta
    self._file.write(encode_record(record))
