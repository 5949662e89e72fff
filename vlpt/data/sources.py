"""Data sources, named in configs by a spec string: ``synthetic``, ``tfds:NAME``, ``wds:PATTERN``.

A source is random-access (``__len__`` / ``__getitem__``) and yields dicts with at least
``image`` (uint8 [H, W, 3]) and ``caption`` (str); evaluation splits also carry ``captions``
(several per image) and ``label``.

File-backed sources (``wds``, ``tfds``) take ``options`` (see :func:`file_source_options`): with
``train=True`` they yield decoded PIL images that the pipeline crops with the position-keyed
generator (``source.train_crop``), and each example carries ``skips`` (unusable examples passed
over, by reason; see :mod:`vlpt.data.webdataset`).
"""

from __future__ import annotations

from typing import Any

from vlpt.registry import Registry

SOURCES: Registry = Registry("data source")


@SOURCES.register("synthetic")
def _synthetic(argument: str, *, split: str, image_size: int, seed: int,
               options: dict | None = None, **kwargs: Any):
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
  crop = (train_crop(size, tc.get("crop_scale", (0.9, 1.0)), tc.get("crop_ratio", (3 / 4, 4 / 3)),
                     interpolation) if train else CenterCrop(size, interpolation))
  return {"train": train, "crop": crop,
          "max_bad_fraction": data_config.get("max_bad_fraction", 0.1),
          "min_reads": data_config.get("bad_fraction_min_reads", 256),
          "data_dir": data_config.get("tfds_data_dir", None)}


@SOURCES.register("wds")
def _wds(argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None,
         **kwargs: Any):
  from vlpt.data.webdataset import WebDatasetSource
  del split, seed, kwargs  # the shards are the split
  if not argument:
    raise ValueError("the wds source needs shards: 'wds:dir/{00000..00009}.tar' or 'wds:list.txt'")
  options = dict(options or {})
  options.pop("data_dir", None)
  return WebDatasetSource(argument, image_size=image_size, **options)


@SOURCES.register("tfds")
def _tfds(argument: str, *, split: str, image_size: int, seed: int, options: dict | None = None,
          **kwargs: Any):
  from vlpt.data.tfds_source import TfdsSource
  del seed, kwargs
  if not argument:
    raise ValueError("the tfds source needs a dataset name: 'tfds:NAME' (e.g. tfds:coco_captions)")
  return TfdsSource(argument, split=split, image_size=image_size, **dict(options or {}))


def build_source(spec: str, **kwargs: Any):
  """``'kind:argument'`` -> a random-access source."""
  kind, _, argument = spec.partition(":")
  return SOURCES.get(kind)(argument, **kwargs)
