"""Evaluation splits read by index: images (center-cropped), labels and captions, separately.

A spec names the source like training data does:

* ``synthetic``: the built-in dataset's held-out splits (labels, 5 captions, its own prompts);
* ``tfds:NAME`` (``NAME:VERSION``): any TFDS dataset prepared as array_record, read with
  ``tfds.data_source`` (no TensorFlow): image classification sets (``image`` + ``label``) and
  caption sets (``coco_captions``-style ``captions/text`` lists);
* ``wds:PATTERN``: WebDataset shards; captions from ``.txt`` / json ``captions``, a label from the
  json ``label`` field;
* ``imagefolder:ROOT``: ``ROOT/<class>/<image>`` (class names from the folder names, ``_`` read
  as a space; a ``<image stem>.txt`` beside an image gives its captions).

Evaluation must see every example exactly once, so an unusable one is an error naming it (run
``vlpt-data inspect`` on shards), never silently replaced as in training. Images, labels and
captions are read separately so that a process reads only the images of its share while the
(cheap) captions of the whole set are read by every process.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from vlpt.data.loader import to_global
from vlpt.data.transforms import CenterCrop, decode_image
from vlpt.errors import DataError
from vlpt.registry import Registry
from vlpt.sharding import replicated

READERS: Registry = Registry("evaluation source")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class EvalReader:
  """Random access to one evaluation split. Subclasses set the attributes and ``_image``."""

  name: str = ""
  class_names: tuple[str, ...] | None = None  # the source's own class names, if it has them
  prompt_templates: tuple[str, ...] | None = None  # the source's own prompts ("{}" placeholder)
  has_labels: bool = False
  has_captions: bool = False
  has_masks: bool = False  # per-pixel class masks (dense_probe): the class set, background's id
  mask_classes: int | None = None
  mask_background: int | None = None

  def __len__(self) -> int:
    raise NotImplementedError

  def image(self, index: int) -> np.ndarray:
    """uint8 [S, S, 3], resized and center-cropped."""
    raise NotImplementedError

  def label(self, index: int) -> int:
    raise NotImplementedError

  def captions(self, index: int) -> list[str]:
    raise NotImplementedError

  def mask(self, index: int) -> np.ndarray:
    """[S, S] class ids of the pixels of :meth:`image` (``mask_background`` where no object is)."""
    raise NotImplementedError


@READERS.register("synthetic")
class SyntheticReader(EvalReader):
  """The built-in dataset's held-out ``eval`` / ``test`` splits."""

  has_labels = has_captions = has_masks = True

  def __init__(self, argument: str, *, split: str, crop: CenterCrop, seed: int, **unused: Any):
    from vlpt.data.synthetic import BACKGROUND, SyntheticCaptions

    if argument:
      raise ValueError(f"the synthetic source takes no argument, got 'synthetic:{argument}'")
    self._data = SyntheticCaptions(split, image_size=crop.size, seed=seed)
    self._annotated = SyntheticCaptions(split, image_size=crop.size, seed=seed, annotations=True)
    self.mask_classes, self.mask_background = BACKGROUND + 1, BACKGROUND
    self.name = f"synthetic[{split}]"
    self.class_names = tuple(self._data.class_names)
    self.prompt_templates = tuple(self._data.prompt_templates)

  def __len__(self) -> int:
    return len(self._data)

  def image(self, index: int) -> np.ndarray:
    return np.asarray(self._data[index]["image"], np.uint8)

  def label(self, index: int) -> int:
    return int(self._data[index]["label"])

  def captions(self, index: int) -> list[str]:
    return list(self._data[index]["captions"])

  def mask(self, index: int) -> np.ndarray:
    return self._annotated[index]["mask"]


@READERS.register("tfds")
class TfdsReader(EvalReader):
  """A TFDS split through ``tfds.data_source``; images are decoded here (PIL, JPEG draft)."""

  def __init__(
    self,
    argument: str,
    *,
    split: str,
    crop: CenterCrop,
    data_dir: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
    caption_key: str | None = None,
    **unused: Any,
  ):
    import tensorflow_datasets as tfds

    if not argument:
      raise ValueError("the tfds source needs a dataset name: 'tfds:NAME' (e.g. tfds:cifar10)")
    self.name = f"tfds:{argument}[{split}]"
    self.dataset = argument.split(":")[0]
    probe = tfds.data_source(argument, split=split, data_dir=data_dir, download=False)
    features = probe.dataset_info.features
    keys = list(features.keys())
    if image_key is None:
      image_key = next((k for k in keys if type(features[k]).__name__ == "Image"), None)
    if image_key not in keys:
      raise ValueError(f"{self.name} has features {keys}; set image_key to its image feature")
    if label_key is None:
      label_key = next((k for k in keys if type(features[k]).__name__ == "ClassLabel"), None)
    if caption_key is None:
      caption_key = next((k for k in ("captions", "caption", "text") if k in keys), None)
    for what, key in (("label_key", label_key), ("caption_key", caption_key)):
      if key is not None and key not in keys:
        raise ValueError(f"{self.name}: {what}={key!r} is not a feature (features: {keys})")
    self.image_key, self.label_key, self.caption_key = image_key, label_key, caption_key
    self.has_labels, self.has_captions = label_key is not None, caption_key is not None
    if label_key is not None:
      self.class_names = tuple(getattr(features[label_key], "names", ()) or ()) or None
    # images come back as encoded bytes; decoding them here lets JPEGs decode in draft mode
    self._source = tfds.data_source(
      argument,
      split=split,
      data_dir=data_dir,
      download=False,
      decoders={image_key: tfds.decode.SkipDecoding()},
    )
    self._crop = crop

  def __len__(self) -> int:
    return len(self._source)

  def image(self, index: int) -> np.ndarray:
    value = self._source[index][self.image_key]
    try:
      if isinstance(value, (bytes, np.bytes_)):
        image = decode_image(bytes(value), self._crop.min_short_side())
      else:
        from PIL import Image

        image = Image.fromarray(np.asarray(value, np.uint8).squeeze()).convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for corrupt data
      raise DataError(f"{self.name}: example {index} has an undecodable image ({e})") from None
    return self._crop(image)

  def label(self, index: int) -> int:
    return int(self._source[index][self.label_key])

  def captions(self, index: int) -> list[str]:
    from vlpt.data.tfds_source import _text

    return [c for c in _text(self._source[index][self.caption_key]) if c]


@READERS.register("wds")
class WdsReader(EvalReader):
  """WebDataset shards (as ``vlpt-data build`` or img2dataset write them)."""

  has_captions = True

  def __init__(self, argument: str, *, crop: CenterCrop, label_key: str | None = None, **unused: Any):
    from vlpt.data.webdataset import WebDatasetSource

    if not argument:
      raise ValueError("the wds source needs shards: 'wds:dir/{00000..00009}.tar' or 'wds:list.txt'")
    self._source = WebDatasetSource(
      argument, image_size=crop.size, train=True, crop=crop, max_bad_fraction=1.0
    )
    self.name = f"wds:{argument}"
    self._crop = crop
    self._label_key = label_key or "label"
    self.has_labels = len(self) > 0 and self._json(0).get(self._label_key) is not None

  def __len__(self) -> int:
    return len(self._source)

  def _raw(self, index: int) -> dict:
    raw = self._source.read_raw(index)
    if raw["truncated"]:
      raise DataError(
        f"{self.name}: sample {raw['key']} of {raw['url']} is truncated; check the "
        f"shard with `vlpt-data inspect {raw['url']}`"
      )
    return raw

  def _json(self, index: int) -> dict:
    import json

    data = self._raw(index)["json"]
    try:
      meta = json.loads(data.decode("utf-8")) if data else {}
    except ValueError:
      meta = {}
    return meta if isinstance(meta, dict) else {}

  def image(self, index: int) -> np.ndarray:
    raw = self._raw(index)
    try:
      image = decode_image(raw["image"], self._crop.min_short_side())
    except Exception as e:  # noqa: BLE001
      raise DataError(
        f"{self.name}: sample {raw['key']} of {raw['url']} has an undecodable image ({e})"
      ) from None
    return self._crop(image)

  def label(self, index: int) -> int:
    value = self._json(index).get(self._label_key)
    if value is None:
      raise DataError(f"{self.name}: example {index} has no json '{self._label_key}' field")
    return int(value)

  def captions(self, index: int) -> list[str]:
    from vlpt.data.webdataset import parse_captions

    raw = self._raw(index)
    return parse_captions(raw["txt"], raw["json"])[1]


@READERS.register("imagefolder")
class ImageFolderReader(EvalReader):
  """``ROOT/<class>/<image>``; classes sorted by folder name, images by file name."""

  has_labels = True

  def __init__(self, argument: str, *, crop: CenterCrop, **unused: Any):
    root = os.path.expanduser(argument)
    if not os.path.isdir(root):
      raise ValueError(f"imagefolder:{argument}: no such directory")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    self._files: list[str] = []
    labels = []
    for c, name in enumerate(classes):
      folder = os.path.join(root, name)
      files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
      self._files += [os.path.join(folder, f) for f in files]
      labels += [c] * len(files)
    if not self._files:
      raise ValueError(f"imagefolder:{argument}: no images in class folders ROOT/<class>/")
    self._labels = np.asarray(labels, np.int32)
    self.name = f"imagefolder:{argument}"
    self.class_names = tuple(c.replace("_", " ") for c in classes)
    self.has_captions = all(os.path.exists(os.path.splitext(f)[0] + ".txt") for f in self._files)
    self._crop = crop

  def __len__(self) -> int:
    return len(self._files)

  def image(self, index: int) -> np.ndarray:
    path = self._files[index]
    try:
      with open(path, "rb") as f:
        image = decode_image(f.read(), self._crop.min_short_side())
    except Exception as e:  # noqa: BLE001
      raise DataError(f"{path}: undecodable image ({e})") from None
    return self._crop(image)

  def label(self, index: int) -> int:
    return int(self._labels[index])

  def captions(self, index: int) -> list[str]:
    with open(os.path.splitext(self._files[index])[0] + ".txt", encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]


def open_reader(
  spec: str,
  *,
  split: str,
  image_size: int,
  interpolation: str = "bicubic",
  seed: int = 0,
  **options: Any,
) -> EvalReader:
  """``'kind:argument'`` -> an :class:`EvalReader` (``options``: data_dir and feature keys)."""
  kind, _, argument = spec.partition(":")
  crop = CenterCrop(image_size, interpolation)
  return READERS.get(kind)(argument, split=split, crop=crop, seed=seed, **options)


def read_images(reader: EvalReader, indices: Sequence[int], threads: int = 16) -> np.ndarray:
  """Decodes ``indices`` on a thread pool (PIL releases the GIL while decoding)."""
  if len(indices) <= 1 or threads <= 1:
    return np.stack([reader.image(int(i)) for i in indices])
  with concurrent.futures.ThreadPoolExecutor(min(threads, len(indices))) as pool:
    return np.stack(list(pool.map(lambda i: reader.image(int(i)), indices)))


def stream_images(
  reader: EvalReader, num_examples: int, *, mesh: Mesh, global_batch: int, with_labels: bool = False
):
  """Yields (global uint8 image batch, labels [global_batch] or None, valid rows) in order.

  Each process decodes only its rows of every global batch; the last batch is padded by
  repeating the last example (``valid`` says how many rows count). Labels are replicated device
  arrays (nothing is fetched to the host here).
  """
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch // pc
  gather = jax.jit(lambda x: x, out_shardings=replicated(mesh))
  for start in range(0, num_examples, global_batch):
    rows = np.minimum(np.arange(start + pi * local, start + (pi + 1) * local), num_examples - 1)
    batch = {"image": read_images(reader, rows)}
    if with_labels:
      batch["label"] = np.asarray([reader.label(int(i)) for i in rows], np.int32)
    arrays = to_global(batch, mesh, pc)
    labels = gather(arrays["label"]) if with_labels else None
    yield arrays["image"], labels, min(global_batch, num_examples - start)
