"""Writing training shards from the synthetic dataset, a folder or a CSV/TSV/parquet table.

Formats (:func:`make_writer`): WebDataset tars in img2dataset's layout (``00000.tar`` ... with
``KEY.jpg``, ``KEY.txt``, ``KEY.json``), ArrayRecord files of MessagePack records
(:mod:`vlpt.data.arrayrecord`) and Parquet files with small row groups (:mod:`vlpt.data.parquet`).
Every writer has ``write(image_bytes, ext, caption, meta)`` and ``close() -> pattern``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator

import numpy as np

from vlpt.data.shard_writer import ShardSetWriter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def encode_image(image: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
  """uint8 [H, W, 3] -> encoded bytes (``jpg`` or lossless ``png``)."""
  from PIL import Image

  buf = io.BytesIO()
  pil = Image.fromarray(np.asarray(image, np.uint8))
  if fmt in ("jpg", "jpeg"):
    pil.save(buf, format="JPEG", quality=quality)
  elif fmt == "png":
    pil.save(buf, format="PNG")
  elif fmt == "webp":
    pil.save(buf, format="WEBP", quality=quality)
  else:
    raise ValueError(f"unknown image format {fmt!r}; use jpg, png or webp")
  return buf.getvalue()


class ShardWriter(ShardSetWriter):
  """WebDataset tar shards as img2dataset writes them: ``KEY.<ext>``, ``KEY.txt``, ``KEY.json``."""

  suffix = ".tar"
  source_kind = "wds"

  def _open_file(self, path: str) -> tarfile.TarFile:
    return tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

  def _add(self, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    self._file.addfile(info, io.BytesIO(data))

  def _write_sample(self, key, image, ext, caption, meta) -> None:
    self._add(f"{key}.{ext}", image)
    if caption is not None:
      self._add(f"{key}.txt", caption.encode("utf-8"))
    if meta is not None:
      self._add(f"{key}.json", json.dumps(meta).encode("utf-8"))


FORMATS = ("wds", "arrayrecord", "parquet")


def make_writer(fmt: str, out_dir: str, shard_size: int = 10000, **kwargs):
  """A shard writer: ``wds`` (tar), ``arrayrecord`` or ``parquet`` (``row_group_size=``)."""
  if fmt == "wds":
    return ShardWriter(out_dir, shard_size)
  if fmt == "arrayrecord":
    from vlpt.data.arrayrecord import ArrayRecordShardWriter

    return ArrayRecordShardWriter(out_dir, shard_size)
  if fmt == "parquet":
    from vlpt.data.parquet import ROW_GROUP_SIZE, ParquetShardWriter

    return ParquetShardWriter(out_dir, shard_size, kwargs.get("row_group_size") or ROW_GROUP_SIZE)
  raise ValueError(f"unknown shard format {fmt!r}; use one of {FORMATS}")


def sniff_ext(data: bytes) -> str:
  """The file extension of encoded image bytes by their magic number (``jpg`` if unknown)."""
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "png"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "webp"
  return "jpg"


def synthetic_samples(
  split: str, num: int, image_size: int, seed: int
) -> Iterator[tuple[np.ndarray, str, dict]]:
  """Examples 0..num-1 of the synthetic split (image, caption, json meta with all captions)."""
  from vlpt.data.synthetic import SyntheticCaptions

  source = SyntheticCaptions(split, image_size=image_size, seed=seed, num_examples=num)
  for i in range(num):
    ex = source[i]
    yield (
      ex["image"],
      ex["caption"],
      {
        "caption": ex["caption"],
        "captions": list(ex["captions"]),
        "label": int(ex["label"]),
        "index": i,
      },
    )


def folder_samples(folder: str) -> Iterator[tuple[str, str | None]]:
  """(image path, caption) for every image under ``folder`` with a same-name ``.txt`` caption."""
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      stem, suffix = os.path.splitext(name)
      if suffix.lower() not in IMAGE_SUFFIXES:
        continue
      txt = os.path.join(root, stem + ".txt")
      caption = None
      if os.path.isfile(txt):
        with open(txt, encoding="utf-8", errors="replace") as f:
          caption = f.read().strip()
      yield os.path.join(root, name), caption


def table_samples(
  path: str, path_column: str = "path", caption_column: str = "caption"
) -> Iterator[tuple[str | bytes, str | None]]:
  """(image path or image bytes, caption) rows of a CSV/TSV (stdlib) or parquet (pyarrow) table.

  Relative image paths are resolved against the table's directory. In parquet the image column
  may hold the encoded bytes themselves (``binary``, or a ``{"bytes": ...}`` struct); without a
  ``path_column`` such a column is found by name as the ``parquet:`` source finds it.
  """
  base = os.path.dirname(os.path.abspath(path))
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError as e:
      raise SystemExit("reading parquet needs pyarrow: pip install pyarrow") from e
    from vlpt.data.records import CAPTION_FIELDS, IMAGE_FIELDS, image_bytes, pick_field

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    try:
      image_col = (
        path_column if path_column in names else pick_field(names, IMAGE_FIELDS, None, "image", path)
      )
      caption_col = (
        caption_column
        if caption_column in names
        else pick_field(names, CAPTION_FIELDS, None, "caption", path)
      )
    except ValueError as e:
      raise SystemExit(f"{e} (or give --path-column / --caption-column)") from None
    for batch in pf.iter_batches(batch_size=256, columns=[image_col, caption_col]):
      columns = batch.to_pydict()
      for image, caption in zip(columns[image_col], columns[caption_col]):
        data = image_bytes(image)
        if isinstance(caption, list):
          caption = next((str(c) for c in caption if str(c).strip()), "")
        if data is not None:
          yield data, caption
        elif isinstance(image, str):
          yield (image if os.path.isabs(image) else os.path.join(base, image)), caption
    return
  else:
    delimiter = "\t" if path.endswith((".tsv", ".tab")) else ","
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f, delimiter=delimiter)
      missing = {path_column, caption_column} - set(reader.fieldnames or ())
      if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
      rows = [(r[path_column], r[caption_column]) for r in reader]
  for image_path, caption in rows:
    full = image_path if os.path.isabs(image_path) else os.path.join(base, image_path)
    yield full, caption


def write_files(samples: Iterable[tuple[str | bytes, str | None]], writer) -> int:
  """Copies image files' (or given) bytes as they are (no re-encoding); returns the number."""
  n = 0
  for path, caption in samples:
    if isinstance(path, bytes):
      data, ext, meta = path, sniff_ext(path), {"caption": caption or ""}
    else:
      ext = os.path.splitext(path)[1].lower().lstrip(".")
      ext = "jpg" if ext == "jpeg" else ext
      with open(path, "rb") as f:
        data = f.read()
      meta = {"caption": caption or "", "source": os.path.basename(path)}
    writer.write(data, ext, caption, meta)
    n += 1
  return n
