"""WebDataset shards (as img2dataset writes them) as a random-access grain source.

A shard is a tar file whose members are grouped into samples by key (the member name up to the
first dot of its base name): ``KEY.jpg|jpeg|png|webp`` holds the image, ``KEY.txt`` and/or
``KEY.json`` (field ``caption`` or ``text``; a ``captions`` list gives several) the caption.

Instead of streaming the tars, every shard's headers are scanned once (:func:`index_shard`, cached
in memory per file) to record where each member's bytes lie; reading example ``i`` is then a
``pread`` of those bytes. Being random-access, the source plugs into the grain ``MapDataset``
pipeline unchanged: global shuffling, disjoint per-process shares, and exact mid-epoch resume
from the iterator state come for free.

Unusable examples (undecodable image, empty or missing caption, a member cut off by a truncated
tar) are replaced and counted as every file source does (:mod:`vlpt.data.files`); a truncated tar
keeps what it holds up to the cut. Shard lists: :func:`vlpt.data.files.expand_shards`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vlpt.data.files import RobustSource, expand_shards
from vlpt.data.transforms import CenterCrop, decode_image
from vlpt.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


# ---------------------------------------------------------------------------------------------
# the index


@dataclasses.dataclass
class ShardIndex:
  """Where each sample's members lie in one tar (offsets/sizes; -1: absent)."""

  path: str
  keys: list[str]
  image: np.ndarray  # int64 [n, 2]: offset, size
  image_ext: list[str]
  txt: np.ndarray  # int64 [n, 2]
  json: np.ndarray  # int64 [n, 2]
  truncated: np.ndarray  # bool [n]: a member of the sample runs past the end of the file
  shard_truncated: bool
  missing_image: int  # keys with no image member (not indexed)

  def __len__(self) -> int:
    return len(self.keys)


_INDEX_CACHE: dict[tuple, ShardIndex] = {}
_CACHE_LOCK = threading.Lock()


def _split_name(name: str) -> tuple[str, str]:
  directory, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return os.path.join(directory, stem) if directory else stem, ext.lower() if dot else ""


def index_shard(path: str) -> ShardIndex:
  """Scans one tar's headers (no member data is read); cached by (path, size, mtime)."""
  st = os.stat(path)
  cache_key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
  with _CACHE_LOCK:
    hit = _INDEX_CACHE.get(cache_key)
  if hit is not None:
    return hit
  size = st.st_size
  samples: dict[str, dict[str, Any]] = {}
  order: list[str] = []
  shard_truncated = False
  try:
    with tarfile.open(path, "r:") as tf:
      while True:
        try:
          member = tf.next()
        except (tarfile.ReadError, EOFError, OSError):
          shard_truncated = True
          break
        if member is None:
          # no end-of-archive marker (two zero blocks) after the last member: cut at a boundary
          if tf.offset + 2 * tarfile.BLOCKSIZE > size:
            shard_truncated = True
          break
        if not member.isfile():
          continue
        key, ext = _split_name(member.name)
        if key not in samples:
          samples[key] = {}
          order.append(key)
        cut = member.offset_data + member.size > size
        samples[key][ext] = (member.offset_data, member.size, cut)
        if cut:
          shard_truncated = True
          break
  except tarfile.ReadError:  # not even a first header
    shard_truncated = True
  keys, image, image_ext, txt, js, truncated = [], [], [], [], [], []
  missing_image = 0
  for key in order:
    members = samples[key]
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
      missing_image += 1
      continue
    keys.append(key)
    image.append(members[ext][:2])
    image_ext.append(ext)
    txt.append(members["txt"][:2] if "txt" in members else (-1, -1))
    js.append(members["json"][:2] if "json" in members else (-1, -1))
    truncated.append(any(m[2] for m in members.values()))
  as_pairs = lambda x: np.asarray(x, np.int64).reshape(-1, 2)  # noqa: E731
  index = ShardIndex(
    path=path,
    keys=keys,
    image=as_pairs(image),
    image_ext=image_ext,
    txt=as_pairs(txt),
    json=as_pairs(js),
    truncated=np.asarray(truncated, bool),
    shard_truncated=shard_truncated,
    missing_image=missing_image,
  )
  with _CACHE_LOCK:
    _INDEX_CACHE[cache_key] = index
  return index


def index_shards(paths: Iterable[str], threads: int = 8) -> list[ShardIndex]:
  paths = list(paths)
  if len(paths) <= 1:
    return [index_shard(p) for p in paths]
  with ThreadPoolExecutor(min(threads, len(paths))) as pool:
    return list(pool.map(index_shard, paths))


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
  ):
    super().__init__(max_bad_fraction=max_bad_fraction, min_reads=min_reads)
    self.spec = spec
    paths = expand_shards(spec)
    if not paths:
      raise FileNotFoundError(f"no shards match {spec!r}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"{len(missing)} shard(s) of {spec!r} do not exist, e.g. {missing[0]}")
    self.paths = paths
    self.train = train
    self.crop = crop if crop is not None else CenterCrop(image_size)
    self._min_short = self.crop.min_short_side()
    shards = index_shards(paths)
    self.truncated_shards = sum(s.shard_truncated for s in shards)
    self.missing_image = sum(s.missing_image for s in shards)
    counts = np.asarray([len(s) for s in shards], np.int64)
    self._shard = np.repeat(np.arange(len(shards), dtype=np.int32), counts)
    self._row = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0)
    self._shards = shards
    if not len(self._shard):
      raise DataError(f"the shards of {spec!r} hold no samples with an image")
    self._fds: dict[int, int] = {}
    self._pid = os.getpid()

  def __getstate__(self):
    state = super().__getstate__()
    state["_fds"] = {}
    return state

  def __len__(self) -> int:
    return len(self._shard)

  def __repr__(self) -> str:
    return f"WebDatasetSource({self.spec!r}, shards={len(self.paths)}, len={len(self)})"

  def _read(self, shard: int, span) -> bytes | None:
    offset, size = int(span[0]), int(span[1])
    if offset < 0:
      return None
    if self._pid != os.getpid():  # forked: do not share descriptors with the parent
      self._fds, self._pid = {}, os.getpid()
    fd = self._fds.get(shard)
    if fd is None:
      fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
    return os.pread(fd, size, offset)

  def locate(self, index: int) -> tuple[ShardIndex, int]:
    return self._shards[self._shard[index]], int(self._row[index])

  def read_raw(self, index: int) -> dict:
    """Member bytes of example ``index``: key, url, image, image_ext, txt, json, truncated."""
    s = int(self._shard[index])
    shard, row = self._shards[s], int(self._row[index])
    out = {
      "key": shard.keys[row],
      "url": shard.path,
      "image_ext": shard.image_ext[row],
      "truncated": bool(shard.truncated[row]),
    }
    for field in ("image", "txt", "json"):
      span = getattr(shard, field)[row]
      data = self._read(s, span)
      if data is not None and len(data) < span[1]:
        out["truncated"] = True
      out[field] = data
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
