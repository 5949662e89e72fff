"""Parquet files of (image bytes, caption) rows: ``parquet:PATTERN``.

Columns: an image column of encoded bytes (``binary``; or a struct with a ``bytes`` field, as
Hugging Face ``datasets`` stores images) and a caption column (``string``, or a list of strings:
several captions / rewrites per image); an optional ``captions`` list column widens the caption
choice, an optional ``key`` column names the example. The columns are found by name
(:data:`vlpt.data.records.IMAGE_FIELDS` / ``CAPTION_FIELDS``, first present wins) or set with
``config.data.image_field`` / ``config.data.caption_field``.

Random access goes through row groups: the footer of every file gives the row count of each
group, example ``i`` is row ``r`` of group ``g`` of file ``f``, and reading it reads (only the
needed columns of) that row group, kept in a small per-process LRU cache
(``row_group_cache`` groups). With a global shuffle almost every example reads its own group, so
write files with small row groups: ``vlpt-data build --format parquet`` writes
``--row-group-size`` (default 16) rows per group. Parquet written for streaming (img2dataset's
default, thousands of rows per group) works, but reads a whole group per example; rewrite it with
``vlpt-data build --from csv FILE.parquet --format parquet`` (the image column may hold bytes).
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any

import numpy as np

from vlpt import storage
from vlpt.data.records import CAPTION_FIELDS, IMAGE_FIELDS, RecordSource, pick_field
from vlpt.data.shard_writer import ShardSetWriter
from vlpt.errors import ConfigError, DataError

SUFFIX = ".parquet"
ROW_GROUP_SIZE = 16


def _pq():
  try:
    import pyarrow.parquet as pq
  except ImportError as e:  # pragma: no cover - pyarrow comes with tensorflow-datasets
    raise ImportError("reading or writing parquet needs pyarrow: pip install pyarrow") from e
  return pq


class ParquetSource(RecordSource):
  """Random-access source over Parquet files (picklable: files reopen in each process).

  A file's row groups and columns are read from its footer when a process first opens it (the
  set's index, :mod:`vlpt.data.record_index`, gives the counts a start needs); on ``gs://`` a file
  is read by ranged requests, or fetched whole into the shard cache when streaming.
  """

  kind = "parquet"

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
    row_group_cache: int = 4,
    cache_dir: str | None = None,
    cache_shards: int = 16,
  ):
    super().__init__(
      spec,
      image_size=image_size,
      train=train,
      crop=crop,
      max_bad_fraction=max_bad_fraction,
      min_reads=min_reads,
      image_field=image_field,
      caption_field=caption_field,
      cache_dir=cache_dir,
      cache_shards=cache_shards,
    )
    names = self._handle(0).names  # the first file's columns decide (one footer read)
    where = f"parquet file {self.paths[0]}"
    try:
      self.image_field = pick_field(names, IMAGE_FIELDS, image_field, "image", where)
      self.caption_field = pick_field(names, CAPTION_FIELDS, caption_field, "caption", where)
    except ValueError as e:  # a ValueError too; the CLIs print it as one line
      raise ConfigError(str(e)) from None
    columns = [self.image_field, self.caption_field]
    columns += [c for c in ("captions", "key") if c in names and c not in columns]
    self.columns = columns
    self.row_group_cache = max(1, int(row_group_cache))
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_lock = threading.Lock()

  def __getstate__(self):
    state = super().__getstate__()
    state["_cache"] = collections.OrderedDict()
    state.pop("_cache_lock", None)
    return state

  def __setstate__(self, state):
    super().__setstate__(state)
    self._cache_lock = threading.Lock()

  @staticmethod
  def count_file(path: str) -> int:
    with storage.open_read(path, block_size=1 << 16) as f:
      return int(_pq().ParquetFile(f).metadata.num_rows)

  def _check_columns(self, file: int, names: list[str]) -> None:
    lacking = [c for c in self.columns[:2] if c not in names]
    if lacking:
      raise DataError(
        f"parquet file {self.paths[file]} lacks column(s) {lacking} that {self.paths[0]} has; "
        f"its columns: {names}"
      )

  def _open(self, source: Any) -> _OpenFile:
    # no pre-buffering: a random read wants one small row group, not coalesced ranges
    return _OpenFile(_pq().ParquetFile(source, pre_buffer=False), source)

  def _close(self, handle: Any) -> None:
    handle.close()

  def _read(self, handle: Any, file: int, row: int) -> dict:
    if not handle.checked:  # each file's columns, when a process first reads it
      self._check_columns(file, handle.names)
      handle.checked = True
    starts = handle.group_starts
    group = int(np.searchsorted(starts, row, side="right")) - 1
    with self._cache_lock:
      table = self._cache.get((file, group))
      if table is None:
        table = handle.file.read_row_group(group, columns=self.columns, use_threads=False)
        self._cache[(file, group)] = table
        while len(self._cache) > self.row_group_cache:
          self._cache.popitem(last=False)
      else:
        self._cache.move_to_end((file, group))
    return table.slice(row - int(starts[group]), 1).to_pylist()[0]

  def close(self) -> None:
    super().close()
    self._cache.clear()


class _OpenFile:
  """An open Parquet file with its row-group starts and column names (from its footer)."""

  def __init__(self, file: Any, source: Any):
    self.file, self._source = file, source
    meta = file.metadata
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    self.group_starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    self.names = list(meta.schema.to_arrow_schema().names)
    self.checked = False

  def close(self) -> None:
    self.file.close()
    if not isinstance(self._source, str):  # a remote file object this source opened
      self._source.close()


class ParquetShardWriter(ShardSetWriter):
  """Writes rows into ``out/{00000..}.parquet``, ``shard_size`` rows each, ``row_group_size`` rows
  per row group (small, for random access).

  Columns: ``key`` string, ``image`` binary (uncompressed), ``image_ext`` string, ``caption``
  string, ``captions`` list<string> (empty when there is only the caption), ``meta`` string
  (JSON).
  """

  suffix = SUFFIX
  record_index = True
  source_kind = "parquet"

  def __init__(self, out_dir: str, shard_size: int = 10000, row_group_size: int = ROW_GROUP_SIZE):
    if row_group_size < 1:
      raise ValueError(f"row group size must be positive, got {row_group_size}")
    import pyarrow as pa

    _pq()
    super().__init__(out_dir, shard_size)
    self.row_group_size = row_group_size
    self._rows: list[dict] = []
    self._schema = pa.schema(
      [
        ("key", pa.string()),
        ("image", pa.binary()),
        ("image_ext", pa.string()),
        ("caption", pa.string()),
        ("captions", pa.list_(pa.string())),
        ("meta", pa.string()),
      ]
    )

  def _flush(self) -> None:
    import pyarrow as pa

    if self._rows:
      table = pa.Table.from_pylist(self._rows, schema=self._schema)
      self._file.write_table(table, row_group_size=self.row_group_size)
      self._rows = []

  def _open_file(self, path: str) -> Any:
    return _pq().ParquetWriter(
      path,
      self._schema,
      compression={
        "key": "snappy",
        "image": "none",
        "image_ext": "snappy",
        "caption": "snappy",
        "captions": "snappy",
        "meta": "snappy",
      },
      use_dictionary=["image_ext"],
      write_statistics=False,
    )

  def _write_sample(self, key, image, ext, caption, meta) -> None:
    meta = dict(meta or {})
    captions = [str(c) for c in (meta.pop("captions", None) or [])]
    self._rows.append(
      {
        "key": key,
        "image": image,
        "image_ext": ext,
        "caption": caption if caption is not None else "",
        "captions": captions,
        "meta": json.dumps(meta) if meta else "",
      }
    )
    if len(self._rows) >= self.row_group_size:
      self._flush()

  def _close_file(self, handle: Any) -> None:
    self._flush()
    handle.close()
