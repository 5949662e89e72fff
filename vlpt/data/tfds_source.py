"""TFDS datasets prepared as array_record, read with ``tfds.data_source`` (no TensorFlow).

``tfds:NAME`` (optionally ``NAME:VERSION``); ``config.data.tfds_data_dir`` points at the
prepared data. The image is the first ``Image`` feature (or ``image``); the caption is the first
text field found among ``caption``, ``text``, ``captions`` (a list or ``{'text': [...]}`` as in
``coco_captions``). Unusable records are replaced like WebDataset samples
(:class:`vlpt.data.webdataset.RobustSource`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlpt.data.files import RobustSource
from vlpt.data.transforms import CenterCrop, decode_image

_CAPTION_FIELDS = ("caption", "text", "captions")


def _text(value: Any) -> list[str]:
  if value is None:
    return []
  if isinstance(value, dict):
    for key in ("text", "caption"):
      if key in value:
        return _text(value[key])
    return []
  if isinstance(value, (bytes, np.bytes_)):
    return [bytes(value).decode("utf-8", errors="replace").strip()]
  if isinstance(value, str):
    return [value.strip()]
  if isinstance(value, (list, tuple, np.ndarray)):
    return [t for v in value for t in _text(v)]
  return []


class TfdsSource(RobustSource):
  """Random-access TFDS source (picklable; the array_record reader reopens in workers)."""

  def __init__(
    self,
    name: str,
    *,
    split: str,
    image_size: int,
    train: bool = False,
    crop: Any = None,
    max_bad_fraction: float = 0.1,
    min_reads: int = 256,
    data_dir: str | None = None,
    image_key: str | None = None,
    caption_key: str | None = None,
  ):
    import tensorflow_datasets as tfds

    super().__init__(max_bad_fraction=max_bad_fraction, min_reads=min_reads)
    self.name = name
    self.split = split
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)
    features = self._source.dataset_info.features
    keys = list(features.keys())
    if image_key is None:
      image_key = next(
        (k for k in keys if type(features[k]).__name__ == "Image"), "image" if "image" in keys else None
      )
    if caption_key is None:
      caption_key = next((k for k in _CAPTION_FIELDS if k in keys), None)
    if image_key is None or caption_key is None:
      raise ValueError(
        f"tfds:{name} has features {keys}; need an image and a caption field "
        f"({', '.join(_CAPTION_FIELDS)})"
      )
    self.image_key, self.caption_key = image_key, caption_key
    self.train = train
    self.crop = crop if crop is not None else CenterCrop(image_size)
    label = features["label"] if "label" in keys else None
    self.class_names = tuple(getattr(label, "names", ()) or ())

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, len={len(self)})"

  def _load(self, index: int) -> tuple[dict | None, str, str]:
    from PIL import Image

    where = f"tfds:{self.name}[{self.split}]"
    record = self._source[index]
    captions = [c for c in _text(record.get(self.caption_key)) if c]
    if not captions:
      return None, "empty_caption", where
    try:
      image = record[self.image_key]
      if isinstance(image, (bytes, np.bytes_)):
        image = decode_image(bytes(image), self.crop.min_short_side())
      else:
        image = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    except Exception:  # noqa: BLE001
      return None, "undecodable_image", where
    if not self.train:
      image = self.crop(image)
    example = {"image": image, "caption": captions[0], "captions": captions}
    if "label" in record:
      example["label"] = np.int32(record["label"])
    return example, "", where
