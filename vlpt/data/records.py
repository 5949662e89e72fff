"""Random-access sources over files of (image bytes, caption) records: ArrayRecord and Parquet.

Both formats hold one example per record (an ArrayRecord record, a Parquet row) as named fields:

- image: encoded bytes (JPEG, PNG, WebP, ...), or a ``{"bytes": ...}`` struct as Hugging Face
  ``datasets`` writes images;
- caption(s): a string, or a list of strings (several captions or rewrites per image), or a
  ``{"text": [...]}`` struct; an extra ``captions`` list next to a ``caption`` string gives the
  captions to choose from (as in WebDataset json).

Field names are found automatically (:data:`IMAGE_FIELDS`, :data:`CAPTION_FIELDS`, first present
wins) or set with ``config.data.image_field`` / ``config.data.caption_field``.

:class:`RecordSource` does what the two formats share: the file list (shard specs as for
WebDataset: braces, globs, ``.txt`` lists, ``::``), the global index over the files, opening
files lazily in each (worker) process, and replacing unusable examples through
:class:`vlpt.data.webdataset.RobustSource` (reasons ``undecodable_image``, ``empty_caption`` and
``truncated``, the last one here meaning a corrupt or unreadable record). A file that cannot be
opened at all (e.g. cut short: both formats keep their index at the end) is left out with a
warning and counted in ``truncated_shards``; if more than ``max_bad_fraction`` of the files are
unreadable, :class:`DataError` names them.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlpt import storage
from vlpt.data import record_index
from vlpt.data.files import RobustSource, ShardCache, expand_shards
from vlpt.data.transforms import CenterCrop, decode_image
from vlpt.data.wds_index import StaleIndex
from vlpt.errors import DataError

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("image", "jpg", "jpeg", "png", "webp", "img", "image_bytes")
CAPTION_FIELDS = ("caption", "text", "txt", "captions", "texts", "prompt")


class CorruptRecord(Exception):
  """A record that cannot be read or parsed (skipped with reason ``truncated``)."""


def _texts(value: Any) -> list[str]:
  if value is None:
    return []
  if isinstance(value, dict):
    for key in ("text", "caption", "captions"):
      if key in value:
        return _texts(value[key])
    return []
  if isinstance(value, (bytes, np.bytes_)):
    value = bytes(value).decode("utf-8", errors="replace")
  if isinstance(value, str):
    value = value.strip()
    return [value] if value else []
  if isinstance(value, (list, tuple, np.ndarray)):
    return [t for v in value for t in _texts(v)]
  return []


def image_bytes(value: Any) -> bytes | None:
  """An image field's value -> encoded bytes (``None`` when absent or empty)."""
  if isinstance(value, dict):
    value = value.get("bytes")
  if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
    data = bytes(value)
    return data or None
  return None


def pick_field(
  names: Sequence[str], candidates: Sequence[str], given: str | None, what: str, where: str
) -> str:
  """The field to read: ``given`` (which must exist) or the first candidate present."""
  if given:
    if given not in names:
      raise ValueError(f"{where}: no {what} field {given!r}; fields: {list(names)}")
    return given
  for name in candidates:
    if name in names:
      return name
  raise ValueError(
    f"{where}: found no {what} field among {list(names)} (looked for "
    f"{', '.join(candidates)}); set config.data.{what}_field"
  )


def captions_of(record: dict, caption_field: str) -> tuple[str, list[str]]:
  """(caption, captions): the caption field's first text; a ``captions`` list widens the choice."""
  texts = _texts(record.get(caption_field))
  caption = texts[0] if texts else ""
  listed = _texts(record.get("captions")) if caption_field != "captions" else texts
  if not caption and listed:
    caption = listed[0]
  return caption, (listed or texts)


class RecordSource(RobustSource):
  """The shared part of :class:`ArrayRecordSource` and :class:`ParquetSource` (picklable).

  Subclasses implement ``count_file(path) -> int`` (a static method, raising on an unreadable
  file), ``_open(path)`` (a per-process handle), ``_read(handle, file, row) -> dict`` (raising
  :class:`CorruptRecord`) and may set ``image_field`` / ``caption_field`` (else every record's
  own fields are searched). ``local_only``: the format's reader opens local files only, so remote
  files are fetched whole into the shard cache (``cache_dir``) before they are read.

  The record counts come from the set's index (:mod:`vlpt.data.record_index`) when there is one,
  and no file is opened at start; else every file's footer is read now.
  """

  kind = "records"
  local_only = False

  def __init__(
    self,
    spec: str,
    *,
    image_size: int,
    train: bool = False,
    crop: Any = None,
    max_bad_fraction: float = 0.1,
    min_reads: int = 256,
    image_field: str | None = None,
    caption_field: str | None = None,
    cache_dir: str | None = None,
    cache_shards: int = 16,
  ):
    super().__init__(max_bad_fraction=max_bad_fraction, min_reads=min_reads)
    self.spec = spec
    index = self._index(spec)
    self.train = train
    self.crop = crop if crop is not None else CenterCrop(image_size)
    self._min_short = self.crop.min_short_side()
    self.image_field, self.caption_field = image_field or None, caption_field or None
    if index.unreadable:
      first, why = next(iter(index.unreadable.items()))
      n = len(index.paths)
      message = (
        f"{len(index.unreadable)} of {n} {self.kind} file(s) of {spec!r} cannot be read, "
        f"e.g. {first} ({why})"
      )
      if len(index.unreadable) == n or len(index.unreadable) > max_bad_fraction * n:
        raise DataError(
          f"{message}; more than config.data.max_bad_fraction={max_bad_fraction}. "
          f"Check them with `vlpt-data inspect {self.kind}:{spec}`"
        )
      log.warning("%s; leaving them out", message)
    self.unreadable = list(index.unreadable)
    self.truncated_shards = len(index.unreadable)
    keep = [i for i, c in enumerate(index.counts) if c > 0 and index.paths[i] not in index.unreadable]
    self.paths = [index.paths[i] for i in keep]
    self._sizes = [index.sizes[i] for i in keep] if index.path else None
    self._index_path = index.path
    self._starts = np.concatenate([[0], np.cumsum([index.counts[i] for i in keep])]).astype(np.int64)
    if not len(self):
      raise DataError(f"the {self.kind} files of {spec!r} hold no records")
    if self.local_only and any(storage.is_remote(p) for p in self.paths[:1]) and not cache_dir:
      cache_dir = os.path.join(tempfile.gettempdir(), "vlpt-shard-cache")
    self.cache = ShardCache(cache_dir, cache_shards, f".{self.kind}") if cache_dir else None
    self._handles: dict[int, Any] = {}
    self._open_lock = threading.Lock()
    self._pid = os.getpid()

  def _index(self, spec: str) -> record_index.RecordIndex:
    """The set's counts: its index (named by the spec, or beside the files), else a count now."""
    if spec.endswith(record_index.SUFFIX):
      return record_index.read_index(spec, self.kind)
    paths = expand_shards(spec)
    if not paths:
      raise FileNotFoundError(f"no files match {spec!r}")
    found = record_index.find_index(paths)
    if found:
      return record_index.read_index(found, self.kind)
    missing = [p for p in paths if not storage.isfile(p)]
    if missing:
      raise FileNotFoundError(f"{len(missing)} file(s) of {spec!r} do not exist, e.g. {missing[0]}")
    if len(paths) > 100 or storage.is_remote(paths[0]):
      log.warning(
        "no index for these %d %s files (expected at %s): reading every file's footer now%s; "
        "`vlpt-data index %s:PATTERN` writes the counts once and starts open no file",
        len(paths),
        self.kind,
        record_index.index_path_for(paths),
        " (downloading each whole: the reader opens local files only)" if self.local_only else "",
        self.kind,
      )
    return self.index_files(paths)

  @classmethod
  def index_files(cls, paths: Sequence[str], threads: int = 16) -> record_index.RecordIndex:
    """Every file's record count and size, read now (what ``vlpt-data index`` writes)."""
    count = cls.count_file
    if cls.local_only:
      count = functools.partial(record_index.local_copy_count, count_local=cls.count_file)
    return record_index.index_files(cls.kind, paths, count, threads)

  # -- subclass hooks
  @staticmethod
  def count_file(path: str) -> int:
    raise NotImplementedError

  def _open(self, path: str) -> Any:
    raise NotImplementedError

  def _read(self, handle: Any, file: int, row: int) -> dict:
    raise NotImplementedError

  def _close(self, handle: Any) -> None:
    close = getattr(handle, "close", None)
    if close is not None:
      close()

  # -- pickling: handles are reopened lazily in each process
  def __getstate__(self):
    state = super().__getstate__()
    state["_handles"] = {}
    state.pop("_open_lock", None)
    return state

  def __setstate__(self, state):
    super().__setstate__(state)
    self._open_lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.spec!r}, files={len(self.paths)}, len={len(self)})"

  @property
  def shard_counts(self) -> np.ndarray:
    """Records per file (what streaming orders: :mod:`vlpt.data.streaming`)."""
    return np.diff(self._starts)

  @property
  def shard_starts(self) -> np.ndarray:
    return self._starts

  def locate(self, index: int) -> tuple[int, int]:
    """Example ``index`` -> (file number, row in that file)."""
    file = int(np.searchsorted(self._starts, index, side="right")) - 1
    return file, int(index - self._starts[file])

  def _handle(self, file: int) -> Any:
    if self._pid != os.getpid():  # forked: do not share handles with the parent
      self._handles, self._pid = {}, os.getpid()
    handle = self._handles.get(file)
    if handle is None:
      with self._open_lock:
        handle = self._handles.get(file)
        if handle is None:
          handle = self._handles[file] = self._open(self._readable(file))
    return handle

  def _readable(self, file: int) -> Any:
    """What ``_open`` gets for file ``file``: a local path (the file, or its fetched copy), or a
    remote file object; checked against the index's size."""
    path = self.paths[file]
    if not storage.is_remote(path):
      self._check_size(file, os.path.getsize(path))
      return path
    if self.cache is not None:
      local = self.cache.fetch(path, file, self._forget)
      self._check_size(file, os.path.getsize(local))
      return local
    f = storage.open_read(path, block_size=1 << 20)  # random reads: little read-ahead
    self._check_size(file, int(f.size))
    return f

  def _check_size(self, file: int, size: int) -> None:
    if self._sizes is not None and size != self._sizes[file]:
      raise StaleIndex(
        f"{self.paths[file]} is {size} bytes, the index {self._index_path} says "
        f"{self._sizes[file]}: rewrite it with `vlpt-data index {self.kind}:PATTERN`"
      )

  def _forget(self, file: int) -> None:
    """The shard cache dropped ``file``'s copy: close it (called under the open lock)."""
    handle = self._handles.pop(file, None)
    if handle is not None:
      self._close(handle)

  def read_record(self, index: int) -> dict:
    """The fields of example ``index`` (raises :class:`CorruptRecord`)."""
    file, row = self.locate(index)
    try:
      return self._read(self._handle(file), file, row)
    except (CorruptRecord, DataError):  # a stale index, a file without the columns: loud
      raise
    except Exception as e:  # noqa: BLE001 - a damaged chunk, page or row group
      raise CorruptRecord(f"{self.paths[file]}[{row}]: {type(e).__name__}: {e}") from e

  def parse(self, record: dict) -> tuple[bytes | None, str, list[str]]:
    """(image bytes or None, caption, captions) of a record (fields as configured, else found)."""
    image_field = self.image_field or next((f for f in IMAGE_FIELDS if f in record), None)
    caption_field = self.caption_field or next((f for f in CAPTION_FIELDS if f in record), None)
    image = image_bytes(record.get(image_field)) if image_field else None
    caption, captions = captions_of(record, caption_field) if caption_field else ("", [])
    return image, caption, captions

  def _load(self, index: int) -> tuple[dict | None, str, str]:
    file, row = self.locate(index)
    where = self.paths[file]
    try:
      record = self.read_record(index)
    except CorruptRecord:
      return None, "truncated", where
    image, caption, captions = self.parse(record)
    if not caption:
      return None, "empty_caption", where
    if image is None:
      return None, "undecodable_image", where
    try:
      decoded = decode_image(image, self._min_short)
    except Exception:  # noqa: BLE001 - PIL raises many kinds for corrupt data
      return None, "undecodable_image", where
    if not self.train:
      decoded = self.crop(decoded)
    key = record.get("key")
    key = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return (
      {
        "image": decoded,
        "caption": caption,
        "captions": captions,
        "key": str(key) if key is not None else f"{os.path.basename(where)}:{row}",
        "url": where,
      },
      "",
      where,
    )

  def close(self) -> None:
    for handle in self._handles.values():
      self._close(handle)
    self._handles = {}


def inspect_records(source: RecordSource) -> dict[str, int]:
  """Full scan of a record source: the counts ``vlpt-data inspect`` prints."""
  counts = {
    "samples": len(source),
    "undecodable_images": 0,
    "empty_captions": 0,
    "truncated_shards": source.truncated_shards,
    "truncated_samples": 0,
    "missing_images": 0,
  }
  for i in range(len(source)):
    try:
      record = source.read_record(i)
    except CorruptRecord:
      counts["truncated_samples"] += 1
      continue
    image, caption, _ = source.parse(record)
    if not caption:
      counts["empty_captions"] += 1
    if image is None:
      counts["missing_images"] += 1
      counts["undecodable_images"] += 1
      continue
    try:
      decode_image(image)
    except Exception:  # noqa: BLE001
      counts["undecodable_images"] += 1
  source.close()
  return counts
