"""The grain input pipeline: source -> shuffle -> this process's share -> transform -> batch.

Determinism across topologies is by construction: global batch ``s`` is always the stream
positions ``[s*B, (s+1)*B)``, process ``p`` of ``P`` takes rows ``[p*B/P, (p+1)*B/P)`` of it, and
every random choice of an example (augmentation, caption choice) is seeded by
``(seed, stream position)``. So 1 device, 8 devices and 2 processes see the same global batches,
and the iterator state is simply where the stream is.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import grain
import numpy as np

from vlpt import storage
from vlpt.data.files import SKIP_REASONS, check_files_exist, expand_shards
from vlpt.data.normalization import check_normalization
from vlpt.data.sources import SOURCES, build_source, file_source_options
from vlpt.data.streaming import ProcessPositions, ShardStream
from vlpt.data.synthetic import MAX_OBJECTS
from vlpt.data.transforms import RandomResizedCrop, augment


class GlobalBatchShare(grain.MapDataset):
  """Element ``k`` of this process = stream position ``(k // b) * B + offset + k % b``.

  Yields ``(position, example)``; the position keys per-example randomness downstream.
  """

  def __init__(
    self, parent: grain.MapDataset, *, global_batch: int, process_index: int, process_count: int
  ):
    super().__init__(parent)
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self._global = global_batch
    self._local = global_batch // process_count
    self._offset = process_index * self._local

  def __len__(self) -> int:
    n = len(self._parent)
    return n if n >= sys.maxsize else (n // self._global) * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, j = divmod(index, self._local)
    position = step * self._global + self._offset + j
    return position, self._parent[position]


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Example -> {'image': uint8 [H, W, 3], 'text': int32 [L]}; random choices keyed by position.

  Images stay uint8 on the host (4x less to move); the step normalizes them on device. With a
  ``crop`` (file-backed sources: decoded PIL images) the crop draws from its own position-keyed
  generator, and so do the optional horizontal ``flip`` and ``color_jitter`` (any source).
  ``skips`` (examples a source passed over, by reason) is passed through when present.

  ``boxes`` > 0 (sources that annotate their objects: the synthetic one) adds ``boxes`` float32
  [boxes, 4] (normalized ``[y0, x0, y1, x1]``, mirrored with the image), ``box_labels`` int32
  [boxes] (-1: an empty slot) and ``box_phrases`` int32 [boxes, L] (the objects' phrases,
  tokenized; empty slots hold only padding).

  ``local_crops`` > 0 (SigLIP 2's self-distillation, ``config.self_distillation.weight`` > 0; see
  :func:`local_crop_settings`) adds ``local_images`` uint8 [local_crops, local_size, local_size, 3]:
  random crops of ``local_scale`` of the (augmented) image's area, aspect ratio in [3/4, 4/3],
  resized (bicubic) to ``local_size``, from their own position-keyed generator. They are made at
  every step, also before the stage starts (one shape for the whole run, so the step compiles
  once); the host cost is one PIL crop-and-resize per view, small next to decoding.
  """

  tokenizer: Any
  seed: int
  random_caption: bool = True
  crop: Any = None
  flip: bool = False
  color_jitter: float = 0.0
  boxes: int = 0
  local_crops: int = 0
  local_size: int = 0
  local_scale: tuple[float, float] = (0.05, 0.4)

  def __call__(self, item: tuple[int, dict]) -> dict[str, np.ndarray]:
    position, example = item
    rng = np.random.default_rng([self.seed, 0x7A11, position])
    caption = example["caption"]
    captions = example.get("captions")
    if self.random_caption and captions:
      caption = captions[rng.integers(len(captions))]
    image = example["image"]
    if self.crop is not None and not isinstance(image, np.ndarray):  # decoded files only
      image = self.crop(image, np.random.default_rng([self.seed, 0xC209, position]))
    image = np.asarray(image, np.uint8)
    if self.flip or self.color_jitter > 0:
      image = augment(
        image,
        np.random.default_rng([self.seed, 0xF71B, position]),
        flip=self.flip,
        jitter=self.color_jitter,
      )
    out = {"image": image, "text": self.tokenizer([caption])[0]}
    if self.boxes:
      # augment's first draw decides the flip: the same draw mirrors the boxes
      flipped = self.flip and np.random.default_rng([self.seed, 0xF71B, position]).random() < 0.5
      out.update(self._boxes(example, flipped))
    if self.local_crops:
      local_rng = np.random.default_rng([self.seed, 0x10CA, position])
      out["local_images"] = self._local_views(image, local_rng)
    if "skips" in example:
      out["skips"] = example["skips"]
    elif self.crop is not None:  # an in-memory source mixed with file sources: nothing skipped
      out["skips"] = np.zeros(len(SKIP_REASONS), np.int32)
    return out

  def _local_views(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    crop = RandomResizedCrop(
      self.local_size, scale=tuple(self.local_scale), draft=False, reducing_gap=None
    )
    pil = Image.fromarray(image)
    return np.stack([crop(pil, rng) for _ in range(self.local_crops)]).astype(np.uint8)

  def _boxes(self, example: dict, flipped: bool) -> dict[str, np.ndarray]:
    k = min(len(example["box_labels"]), self.boxes)
    boxes = np.zeros((self.boxes, 4), np.float32)
    boxes[:k] = example["boxes"][:k]
    if flipped:
      boxes[:k, 1], boxes[:k, 3] = 1.0 - boxes[:k, 3], 1.0 - boxes[:k, 1]
    labels = np.full((self.boxes,), -1, np.int32)
    labels[:k] = example["box_labels"][:k]
    phrases = np.full((self.boxes, self.tokenizer.context_length), self.tokenizer.pad_id, np.int32)
    if k:
      phrases[:k] = self.tokenizer(list(example["box_phrases"][:k]))
    return {"boxes": boxes, "box_labels": labels, "box_phrases": phrases}


def train_dataset(
  data_config: Any,
  *,
  tokenizer: Any,
  global_batch: int,
  seed: int,
  process_index: int,
  process_count: int,
  start_batch: int = 0,
  local_crops: dict | None = None,
) -> grain.IterDataset:
  """The unbounded training stream of this process's local batches, from ``start_batch`` on;
  ``local_crops``: :class:`TrainTransform`'s local-view settings (:func:`local_crop_settings`)."""
  tc = data_config.train
  mixture = tuple(tc.get("mixture", ()) or ()) or ((tc.source, 1.0),)
  boxes = bool(tc.get("boxes", False))
  if tc.get("access", "random") == "stream":  # whole shards in a shuffled order (object storage)
    ds, crop = _stream_mixture(data_config, mixture, seed, process_index, process_count)
    ds = ProcessPositions(
      ds, global_batch=global_batch, process_index=process_index, process_count=process_count
    )
  else:
    ds, crop = _random_mixture(data_config, mixture, seed, boxes)
    ds = GlobalBatchShare(
      ds, global_batch=global_batch, process_index=process_index, process_count=process_count
    )
  ds = ds.map(
    TrainTransform(
      tokenizer,
      seed,
      random_caption=tc.random_caption,
      crop=crop,
      flip=bool(tc.get("flip", False)),
      color_jitter=float(tc.get("color_jitter", 0.0)),
      boxes=MAX_OBJECTS if boxes else 0,
      **(local_crops or {}),
    )
  )
  ds = ds.batch(global_batch // process_count, drop_remainder=True)
  if start_batch:
    ds = ds[start_batch:]
  it = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=data_config.read_threads, prefetch_buffer_size=data_config.prefetch)
  )
  if data_config.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return it


def local_crop_settings(config: Any) -> dict:
  """TrainTransform's local-view keywords for ``config`` (the whole config): empty unless the
  local-to-global self-distillation term is on (``config.self_distillation.weight`` > 0)."""
  sd = config.get("self_distillation")
  if sd is None or float(sd.weight) <= 0:
    return {}
  return {
    "local_crops": int(sd.local_crops),
    "local_size": int(sd.local_size),
    "local_scale": tuple(float(x) for x in sd.local_scale),
  }


def _random_mixture(data_config: Any, mixture, seed: int, boxes: bool):
  """Random access: each source globally shuffled and repeated; a mixture interleaves the endless
  sources deterministically in proportion to the weights, so stream positions, per-process
  shares and resume work as for one source. Returns (dataset, the file sources' crop)."""
  tc = data_config.train
  parts, crop = [], None
  for i, (spec, _) in enumerate(mixture):
    source = build_source(
      spec,
      split=tc.split,
      image_size=data_config.image_size,
      seed=seed,
      options=file_source_options(data_config, train=True),
      **({"annotations": True} if boxes else {}),  # check_config: synthetic sources only
    )
    if crop is None and getattr(source, "train", False):
      crop = getattr(source, "crop", None)
    part = grain.MapDataset.source(source)
    if tc.shuffle:
      part = part.shuffle(seed=seed + i)
    if len(part) < sys.maxsize:
      part = part.repeat(None)
    parts.append(part)
  weights = [float(w) for _, w in mixture]
  return (parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)), crop


def _stream_mixture(data_config: Any, mixture, seed: int, process_index: int, process_count: int):
  """Streaming: each source's shards read whole by this process (:mod:`vlpt.data.streaming`); a
  mixture interleaves this process's streams of its sources in proportion to the weights."""
  tc = data_config.train
  options = file_source_options(data_config, train=True)
  options.update(cache_dir=stream_cache_dir(data_config), cache_shards=3 * int(tc.stream_window))
  parts, crop = [], None
  for i, (spec, _) in enumerate(mixture):
    source = build_source(
      spec, split=tc.split, image_size=data_config.image_size, seed=seed, options=options
    )
    crop = crop or source.crop
    parts.append(
      ShardStream(
        source,
        seed=seed + i,
        window=tc.stream_window,
        shuffle=tc.shuffle,
        process_index=process_index,
        process_count=process_count,
      )
    )
  weights = [float(w) for _, w in mixture]
  return (parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)), crop


def naflex_stream(
  data_config: Any,
  *,
  tokenizer: Any,
  patch: int,
  seed: int,
  process_index: int,
  process_count: int,
  multiple_of: int,
  start_step: int = 0,
):
  """NaFlex training (``config.data.train.naflex.lengths``): this process's token-budget batches
  of NaFlex dicts (:class:`vlpt.data.naflex.NaflexStream`) over the same global shuffle."""
  from vlpt.data.naflex import NaflexStream
  from vlpt.data.normalization import NORMALIZATION

  tc = data_config.train
  mixture = tuple(tc.get("mixture", ()) or ()) or ((tc.source, 1.0),)
  ds, _ = _random_mixture(data_config, mixture, seed, boxes=False)
  mean, std = NORMALIZATION[data_config.normalization]
  return NaflexStream(
    ds,
    tokenizer=tokenizer,
    patch=patch,
    token_budget=int(tc.naflex.token_budget),
    lengths=tuple(tc.naflex.lengths),
    mean=mean,
    std=std,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    multiple_of=multiple_of,
    aspect_ratios=tuple(tc.naflex.aspect_ratios),
    crop_scale=tuple(tc.crop_scale),
    random_caption=tc.random_caption,
    start_step=start_step,
    threads=data_config.read_threads,
  )


def stream_cache_dir(data_config: Any) -> str:
  """Where streaming keeps fetched remote shards: ``config.data.train.stream_cache``, else a
  folder in the system's temporary directory, shared by the host's processes."""
  import tempfile

  default = os.path.join(tempfile.gettempdir(), "vlpt-shard-cache")
  return data_config.train.get("stream_cache", "") or default


class SkipCounter:
  """Wraps a batch iterator: removes ``skips`` from each batch and adds it to ``counts`` by reason.

  ``counts`` are this process's running totals, as of the last batch drawn from the wrapped
  iterator. They are part of the iterator state: ``get_state()`` is
  ``{"iterator": <wrapped state>, "skipped": {reason: count}}``, so a restored run goes on
  counting from the checkpointed totals (a bare wrapped state, as older checkpoints hold, is
  accepted too and leaves the counts at zero). ``close`` is passed through.
  """

  def __init__(self, iterator: Any, counts: dict[str, int] | None = None):
    self._iterator = iterator
    self.counts = {} if counts is None else counts

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    skips = batch.pop("skips", None)
    if skips is not None:
      totals = np.asarray(skips).reshape(-1, len(SKIP_REASONS)).sum(0)
      for reason, n in zip(SKIP_REASONS, totals):
        self.counts[reason] = self.counts.get(reason, 0) + int(n)
    return batch

  def get_state(self) -> dict:
    return {"iterator": self._iterator.get_state(), "skipped": dict(self.counts)}

  def set_state(self, state) -> None:
    if isinstance(state, dict) and set(state) == {"iterator", "skipped"}:
      self._iterator.set_state(state["iterator"])
      counts = {str(k): int(v) for k, v in state["skipped"].items()}
    else:  # a checkpoint written before the counts were part of the state
      self._iterator.set_state(state)
      counts = {}
    self.counts.clear()
    self.counts.update(counts)

  def close(self) -> None:
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


def check_config(data_config: Any) -> None:
  """``config.data`` -> ValueError naming the first problem; sources that name files must point
  at existing files (cheap: nothing is opened or indexed)."""
  dc = data_config
  check_normalization(dc.normalization)
  tc = dc.train
  specs = [tc.source]
  for entry in tc.mixture:
    if (
      len(entry) != 2
      or not isinstance(entry[0], str)
      or not isinstance(entry[1], (int, float))
      or entry[1] <= 0
    ):
      raise ValueError(
        f"config.data.train.mixture entries must be (source spec, positive "
        f"weight) pairs, got {tuple(entry)!r}"
      )
    specs.append(entry[0])
  for spec in specs:
    kind, _, arg = spec.partition(":")
    where = "config.data.train.mixture" if spec is not tc.source else "config.data.train.source"
    if kind not in SOURCES:
      raise ValueError(f"{where}={kind!r} is not one of: {', '.join(SOURCES.names())}")
    if tc.get("boxes", False) and kind != "synthetic":
      raise ValueError(
        f"config.data.train.boxes=True needs sources that know where their objects are (the "
        f"built-in 'synthetic' one); {where} has {spec!r}"
      )
    if kind in ("wds", "arrayrecord", "parquet") and arg:
      check_files_exist(spec)
  tok = dc.tokenizer
  for key in ("path", "model_path", "vocab_path"):
    value = tok.get(key)
    if value and not os.path.exists(os.path.expanduser(str(value))):
      raise ValueError(
        f"config.data.tokenizer.{key}={value!r} does not exist (the {tok.name} tokenizer's file)"
      )
  if dc.interpolation not in ("bicubic", "bilinear"):
    raise ValueError(f"config.data.interpolation must be bicubic or bilinear, got {dc.interpolation!r}")
  lo, hi = (float(x) for x in tc.crop_scale)
  if not 0 < lo <= hi <= 1:
    raise ValueError(
      f"config.data.train.crop_scale={tuple(tc.crop_scale)} must satisfy 0 < min <= max <= 1"
    )
  _check_access(tc)
  _check_naflex(tc)
  if not float(tc.color_jitter) >= 0:
    raise ValueError(f"config.data.train.color_jitter={tc.color_jitter} must be >= 0 (0: off)")
  for key in ("max_bad_fraction", "max_unknown_fraction"):
    if not 0 <= dc[key] <= 1:
      raise ValueError(f"config.data.{key}={dc[key]} must be in [0, 1]")


def _check_naflex(tc: Any) -> None:
  nf = tc.get("naflex")
  if nf is None or not nf.lengths:
    return
  lengths = tuple(nf.lengths)
  if any(int(n) < 1 for n in lengths):
    raise ValueError(f"config.data.train.naflex.lengths={lengths} must be positive patch counts")
  if int(nf.token_budget) < max(lengths):
    raise ValueError(
      f"config.data.train.naflex.token_budget={nf.token_budget} must hold at least one example of "
      f"the longest sequence ({max(lengths)} patches)"
    )
  lo, hi = (float(x) for x in nf.aspect_ratios)
  if not 0 < lo <= hi:
    raise ValueError(f"config.data.train.naflex.aspect_ratios={(lo, hi)} must satisfy 0 < min <= max")
  if tc.get("access", "random") != "random" or tc.get("boxes", False):
    raise ValueError("NaFlex training reads with access='random' and without boxes")


STREAMABLE = ("wds", "arrayrecord", "parquet")  # sources made of shards a process reads whole


def _check_access(tc: Any) -> None:
  access = tc.get("access", "random")
  if access not in ("random", "stream"):
    raise ValueError(f"config.data.train.access must be random or stream, got {access!r}")
  specs = [entry[0] for entry in tc.mixture] if tc.mixture else [tc.source]
  for spec in specs:
    kind = spec.partition(":")[0]
    if access == "stream" and kind not in STREAMABLE:
      raise ValueError(
        f"config.data.train.access='stream' reads file shards whole: it needs {', '.join(STREAMABLE)} "
        f"sources, got {spec!r}"
      )
    if access == "random" and kind == "arrayrecord" and _remote(spec.partition(":")[2]):
      raise ValueError(
        f"{spec!r}: ArrayRecord's reader opens local files only, so random access over gs:// "
        "would download every file on every host; set config.data.train.access='stream' (whole "
        "files, fetched once per epoch) or mount the bucket (gcsfuse) and give the local path"
      )
  if int(tc.get("stream_window", 1)) < 1:
    raise ValueError(f"config.data.train.stream_window={tc.stream_window} must be >= 1")


def _remote(pattern: str) -> bool:
  """Whether a shard spec names files on object storage (its text, else its first file)."""
  return storage.is_remote(pattern) or any(map(storage.is_remote, expand_shards(pattern)[:1]))


def check_vocabulary(data_config: Any, tokenizer: Any, *, sample: int = 256) -> None:
  """Refuses a tokenizer that does not know the training captions' words (ValueError).

  Reads ``sample`` captions spread over every training source and tokenizes them; when more than
  ``config.data.max_unknown_fraction`` of them hold the tokenizer's unknown token, the run would
  train on unknown ids: the error says which tokenizer to use instead.
  """
  from vlpt.data.tokenizers import unknown_fraction

  if getattr(tokenizer, "unk_id", None) is None:
    return
  tc = data_config.train
  for spec, _ in tuple(tc.get("mixture", ()) or ()) or ((tc.source, 1.0),):
    source = build_source(
      spec,
      split=tc.split,
      image_size=data_config.image_size,
      seed=0,
      options=file_source_options(data_config, train=True),
    )
    n = min(sample, len(source))
    captions = [source[int(i)]["caption"] for i in np.linspace(0, len(source) - 1, n).astype(int)]
    fraction = unknown_fraction(tokenizer, captions)
    if fraction > data_config.max_unknown_fraction:
      example = next(c for c in captions if unknown_fraction(tokenizer, [c]) > 0)
      name = data_config.tokenizer.name
      advice = (
        "the word tokenizer is demo-only: it knows the built-in dataset's words and nothing else"
        if name == "word"
        else "it lacks these captions' words"
      )
      raise ValueError(
        f"config.data.tokenizer ({name}) maps {fraction:.0%} of {n} sampled captions of {spec!r} "
        f"to its unknown token (e.g. {example[:60]!r}): {advice}. Use "
        "--config.data.tokenizer.name=clip_bpe (CLIP's byte-level BPE, no unknown token) or the "
        "pretrained model's own tokenizer (docs/data.md); config.data.max_unknown_fraction="
        f"{data_config.max_unknown_fraction} sets the limit"
      )
