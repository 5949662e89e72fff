"""Small TFDS datasets built in the tests (array_record, no TensorFlow) from the built-in data.

``vlpt_eval_shapes``: an image classification set (``image``, ``label`` with the 24 class names);
``vlpt_eval_captions``: a retrieval set (``image``, ``captions`` = several texts per image), the
layout of TFDS's ``coco_captions``.
"""

import numpy as np
import tensorflow_datasets as tfds

from vlpt.data.synthetic import CLASS_NAMES, SyntheticCaptions

SIZE = 40  # stored larger than the model's 32 px, so the reader resizes and crops


def _examples(split, n):
  from PIL import Image

  data = SyntheticCaptions(split, image_size=SIZE, seed=7, num_examples=n)
  for i in range(n):
    ex = data[i]
    yield i, ex, Image.fromarray(np.asarray(ex["image"], np.uint8))


class VlptEvalShapes(tfds.core.GeneratorBasedBuilder):
  """Labelled shapes: train (96) and test (72) splits."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
          "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples("eval", 96), "test": self._generate_examples("test", 72)}

  def _generate_examples(self, split, n):
    for i, ex, image in _examples(split, n):
      yield i, {"image": image, "label": int(ex["label"])}


class VlptEvalCaptions(tfds.core.GeneratorBasedBuilder):
  """Images with 2-5 captions each (a COCO-like retrieval set): test split of 48."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "captions": tfds.features.Sequence(tfds.features.Text()),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i, ex, image in _examples("test", 48):
      yield i, {"image": image, "captions": list(ex["captions"])[: 2 + i % 4]}


def build_all(data_dir: str) -> None:
  for builder in (VlptEvalShapes, VlptEvalCaptions):
    builder(data_dir=data_dir, file_format="array_record").download_and_prepare()
