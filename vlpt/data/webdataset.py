"""WebDataset shards (as img2dataset writes them) as a random-access grain source.

A shard is a tar file whose members are grouped into samples by key (the member name up to the
first dot of its base name): ``KEY.jpg|jpeg|png|webp`` holds the image, ``KEY.txt`` and/or
``KEY.json`` (field ``caption`` or ``text``; a ``captions`` list gives several) the caption.

Instead of streaming the tars, the shards' index (:mod:`vlpt.data.wds_index`: written once by
``vlpt-data index``, else built by scanning every tar header at start) records where each member's
bytes lie; reading example ``i`` is then one ``pread`` (one ranged request on GCS) of the image
with its tar header (which names the key), and one per caption member. Being random-access, the
source plugs into the grain ``MapDataset`` pipeline unchanged: global shuffling, disjoint
per-process shares, and exact mid-epoch resume from the iterator state come for free.

Unusable examples (undecodable image, empty or missing caption, a member cut off by a truncated
tar) are replaced and counted as every file source does (:mod:`vlpt.data.files`); a truncated tar
keeps what it holds up to the cut. Shard lists: :func:`vlpt.data.files.expand_shards`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vlpt import storage
from vlpt.data.files import RobustSource, ShardCache, expand_shards
from vlpt.data.transforms import CenterCrop, decode_image
from vlpt.data.wds_index import (
  BLOCK,
  IMAGE_EXTS,
  SUFFIX,
  find_index,
  key_from_header,
  read_index,
  scanned_tables,
)
from vlpt.errors import DataError

# ---------------------------------------------------------------------------------------------
# captions


def parse_captions(txt: bytes | None, js: bytes | None) -> tuple[str, list[str]]:
  """(caption, captions) of a sample; caption '' when it has none.

  The caption is ``.txt``, else json ``caption`` / ``text``; a json ``captions`` list gives the
  captions (else ``[caption]``). Empty strings do not count.
  """
  caption = txt.decode("utf-8", errors="replace").strip() if txt is not None else ""
  listed: list[str] = []
  if js is not None:
    try:
      meta = json.loads(js.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
      meta = None
    if isinstance(meta, dict):
      if not caption:
        for field in ("caption", "text"):
          if isinstance(meta.get(field), str) and meta[field].strip():
            caption = meta[field].strip()
            break
      if isinstance(meta.get("captions"), list):
        listed = [str(c).strip() for c in meta["captions"] if str(c).strip()]
  if not caption and listed:
    caption = listed[0]
  return caption, (listed or ([caption] if caption else []))


# ---------------------------------------------------------------------------------------------
# the source


class WebDatasetSource(RobustSource):
  """Random-access WebDataset source (picklable: grain workers reopen files lazily).

  ``train=True``: ``image`` is the decoded PIL image (JPEGs drafted for ``crop``); the pipeline
  crops it with the position-keyed generator. Otherwise ``image`` is uint8 ``[S, S, 3]``, center-
  cropped by ``crop`` (default :class:`CenterCrop` at ``image_size``).
  """

  def __init__(
    self,
    spec: str,
    *,
    image_size: int,
    train: bool = False,
    crop: Any = None,
    max_bad_fraction: float = 0.1,
    min_reads: int = 256,
    cache_dir: str | None = None,
    cache_shards: int = 16,
  ):
    super().__init__(max_bad_fraction=max_bad_fraction, min_reads=min_reads)
    self.spec = spec
    # remote shards are fetched whole into cache_dir (streaming order: vlpt.data.streaming)
    self.cache = ShardCache(cache_dir, cache_shards, ".tar") if cache_dir else None
    if spec.endswith(SUFFIX):  # an index written with `vlpt-data index --out`: it names the shards
      tables = read_index(spec)
    else:
      paths = expand_shards(spec)
      if not paths:
        raise FileNotFoundError(f"no shards match {spec!r}")
      index = find_index(paths)
      if index is None:
        missing = [p for p in paths if not storage.isfile(p)]
        if missing:
          raise FileNotFoundError(f"{len(missing)} shard(s) of {spec!r} do not exist, e.g. {missing[0]}")
      tables = read_index(index) if index else scanned_tables(paths)
    self.paths = tables.paths
    self.tables = tables
    self.train = train
    self.crop = crop if crop is not None else CenterCrop(image_size)
    self._min_short = self.crop.min_short_side()
    self.truncated_shards = len(tables.truncated)
    self.missing_image = tables.missing_image
    if not tables.num_samples:
      raise DataError(f"the shards of {spec!r} hold no samples with an image")
    self._fds: dict[int, int] = {}
    self._pid = os.getpid()

  def __getstate__(self):
    state = super().__getstate__()
    state["_fds"] = {}
    return state

  def __len__(self) -> int:
    return self.tables.num_samples

  @property
  def shard_counts(self):
    """Samples per shard (what streaming orders: :mod:`vlpt.data.streaming`)."""
    return self.tables.counts

  @property
  def shard_starts(self):
    return self.tables.starts

  def __repr__(self) -> str:
    return f"WebDatasetSource({self.spec!r}, shards={len(self.paths)}, len={len(self)})"

  def _read(self, shard: int, offset: int, size: int) -> bytes:
    path = self.paths[shard]
    remote = storage.is_remote(path)
    if remote and self.cache is None:
      return storage.read_range(path, offset, size)
    if self._pid != os.getpid():  # forked: do not share descriptors with the parent
      self._fds, self._pid = {}, os.getpid()
    fd = self._fds.get(shard)
    if fd is None:
      with self._lock:
        fd = self._fds.get(shard)
        if fd is None:
          local = self.cache.fetch(path, shard, self._forget) if remote else path
          fd = self._fds[shard] = os.open(local, os.O_RDONLY)
    return os.pread(fd, size, offset)

  def _forget(self, shard: int) -> None:
    fd = self._fds.pop(shard, None)
    if fd is not None:
      os.close(fd)

  def locate(self, index: int) -> tuple[int, int]:
    """Example ``index`` -> (shard, row in the shard)."""
    return self.tables.locate(index)

  def read_raw(self, index: int) -> dict:
    """Member bytes of example ``index``: key, url, image, image_ext, txt, json, truncated."""
    s, row = self.tables.locate(index)
    rec = self.tables.record(s, row)
    flags = int(rec["flags"])
    out = {"url": self.paths[s], "image_ext": IMAGE_EXTS[flags & 3], "truncated": bool(flags & 4)}
    offset, size = int(rec["image"]) * BLOCK, int(rec["image_size"])
    data = self._read(s, offset - BLOCK, size + BLOCK)  # with its header, which names the key
    out["key"] = self.tables.key(s, row) or key_from_header(data[:BLOCK])
    out["image"] = data[BLOCK:]
    if len(data) < size + BLOCK:
      out["truncated"] = True
    for field in ("txt", "json"):
      size = int(rec[f"{field}_size"])
      out[field] = None if size < 0 else self._read(s, int(rec[field]) * BLOCK, size)
      if out[field] is not None and len(out[field]) < size:
        out["truncated"] = True
    return out

  def _load(self, index: int) -> tuple[dict | None, str, str]:
    raw = self.read_raw(index)
    where = raw["url"]
    if raw["truncated"]:
      return None, "truncated", where
    caption, captions = parse_captions(raw["txt"], raw["json"])
    if not caption:
      return None, "empty_caption", where
    try:
      image = decode_image(raw["image"], self._min_short)
    except Exception:  # noqa: BLE001 - PIL raises many kinds for corrupt data
      return None, "undecodable_image", where
    if not self.train:
      image = self.crop(image)
    return (
      {"image": image, "caption": caption, "captions": captions, "key": raw["key"], "url": where},
      "",
      where,
    )

  def close(self) -> None:
    for fd in self._fds.values():
      os.close(fd)
    self._fds = {}
    self.tables.close()


def inspect(spec: str) -> dict[str, int]:
  """Full scan: counts of samples, undecodable images, empty captions and truncated shards."""
  source = WebDatasetSource(spec, image_size=32, train=True, max_bad_fraction=1.0)
  counts = {
    "samples": len(source),
    "undecodable_images": 0,
    "empty_captions": 0,
    "truncated_shards": source.truncated_shards,
    "truncated_samples": 0,
    "missing_images": source.missing_image,
  }
  for i in range(len(source)):
    raw = source.read_raw(i)
    if raw["truncated"]:
      counts["truncated_samples"] += 1
      continue
    if not parse_captions(raw["txt"], raw["json"])[0]:
      counts["empty_captions"] += 1
    try:
      decode_image(raw["image"])
    except Exception:  # noqa: BLE001
      counts["undecodable_images"] += 1
  source.close()
  return counts
