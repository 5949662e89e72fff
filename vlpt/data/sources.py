"""Data sources, named in configs by a spec string: ``synthetic``, ``tfds:NAME``, ``wds:PATTERN``,
``arrayrecord:PATTERN``, ``parquet:PATTERN``.

A source is random-access (``__len__`` / ``__getitem__``) and yields dicts with at least
``image`` (uint8 [H, W, 3]) and ``caption`` (str); evaluation splits also carry ``captions``
(several per image) and ``label``.

File-backed sources (``wds``, ``tfds``, ``arrayrecord``, ``parquet``) take ``options`` (see
:func:`file_source_options`): with ``train=True`` they yield decoded PIL images that the pipeline
crops with the position-keyed generator (``source.crop``), and each example carries ``skips``
(unusable examples passed over, by reason; see :mod:`vlpt.data.files`). The formats and
config keys are documented in docs/data.md.
"""

from __future__ import annotations

from typing import Any

from vlpt.registry import Registry

SOURCES: Registry = Registry("data source")


@SOURCES.register("synthetic")
def _synthetic(
  argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None, **kwargs: Any
):
  from vlpt.data.synthetic import SyntheticCaptions

  del options  # images are drawn at their final size
  if argument:
    raise ValueError(f"the synthetic source takes no argument, got 'synthetic:{argument}'")
  return SyntheticCaptions(split, image_size=image_size, seed=seed, **kwargs)


def file_source_options(data_config: Any, *, train: bool) -> dict:
  """``config.data`` -> the options of file-backed sources (crop, bad-example limits, data dir)."""
  from vlpt.data.transforms import CenterCrop, train_crop

  tc = data_config.train
  size = data_config.image_size
  interpolation = data_config.get("interpolation", "bicubic")
  crop = (
    train_crop(
      size, tc.get("crop_scale", (0.9, 1.0)), tc.get("crop_ratio", (3 / 4, 4 / 3)), interpolation
    )
    if train
    else CenterCrop(size, interpolation)
  )
  return {
    "train": train,
    "crop": crop,
    "max_bad_fraction": data_config.get("max_bad_fraction", 0.1),
    "min_reads": data_config.get("bad_fraction_min_reads", 256),
    "data_dir": data_config.get("tfds_data_dir", None),
    "image_field": data_config.get("image_field", None) or None,
    "caption_field": data_config.get("caption_field", None) or None,
  }


def _options(options: dict | None, *drop: str) -> dict:
  options = dict(options or {})
  for key in drop:
    options.pop(key, None)
  return options


@SOURCES.register("wds")
def _wds(
  argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None, **kwargs: Any
):
  from vlpt.data.webdataset import WebDatasetSource

  del split, seed, kwargs  # the shards are the split
  if not argument:
    raise ValueError("the wds source needs shards: 'wds:dir/{00000..00009}.tar' or 'wds:list.txt'")
  return WebDatasetSource(
    argument, image_size=image_size, **_options(options, "data_dir", "image_field", "caption_field")
  )


@SOURCES.register("tfds")
def _tfds(
  argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None, **kwargs: Any
):
  from vlpt.data.tfds_source import TfdsSource

  del seed, kwargs
  if not argument:
    raise ValueError("the tfds source needs a dataset name: 'tfds:NAME' (e.g. tfds:coco_captions)")
  options = dict(options or {})
  image_key, caption_key = options.pop("image_field", None), options.pop("caption_field", None)
  return TfdsSource(
    argument, split=split, image_size=image_size, image_key=image_key, caption_key=caption_key, **options
  )


@SOURCES.register("arrayrecord")
def _arrayrecord(
  argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None, **kwargs: Any
):
  from vlpt.data.arrayrecord import ArrayRecordSource

  del split, seed, kwargs  # the files are the split
  if not argument:
    raise ValueError(
      "the arrayrecord source needs files: 'arrayrecord:dir/{00000..00009}"
      ".array_record' (`vlpt-data build --format arrayrecord` writes them)"
    )
  return ArrayRecordSource(argument, image_size=image_size, **_options(options, "data_dir"))


@SOURCES.register("parquet")
def _parquet(
  argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None, **kwargs: Any
):
  from vlpt.data.parquet import ParquetSource

  del split, seed, kwargs
  if not argument:
    raise ValueError(
      "the parquet source needs files: 'parquet:dir/*.parquet' "
      "(`vlpt-data build --format parquet` writes them)"
    )
  return ParquetSource(argument, image_size=image_size, **_options(options, "data_dir"))


def record_source_class(kind: str):
  """The class of the ``arrayrecord`` or ``parquet`` source (imported on demand)."""
  if kind == "arrayrecord":
    from vlpt.data.arrayrecord import ArrayRecordSource

    return ArrayRecordSource
  if kind == "parquet":
    from vlpt.data.parquet import ParquetSource

    return ParquetSource
  raise ValueError(f"not a record format: {kind!r} (arrayrecord or parquet)")


def build_source(spec: str, **kwargs: Any):
  """``'kind:argument'`` -> a random-access source."""
  kind, _, argument = spec.partition(":")
  return SOURCES.get(kind)(argument, **kwargs)
