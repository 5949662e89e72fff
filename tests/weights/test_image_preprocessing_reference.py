"""vlpt's inference preprocessing against open_clip's and HF's (docs/models.md states the result).

vlpt's ``Preprocess`` reproduces open_clip's transform exactly. HF's ``CLIPImageProcessor``,
configured the same way (what an HF export's preprocessor_config.json says), rounds differently:
one uint8 level (0.015 after normalization) almost everywhere, and for some non-square sizes a
resized shape one pixel off, which shifts the crop (differences up to ~2.9).
"""

import numpy as np
import pytest
from PIL import Image

from vlpt.data.normalization import OPENAI_MEAN, OPENAI_STD
from vlpt.data.preprocess import Preprocess

SIZES = [(224, 224), (300, 300), (640, 480), (500, 375), (333, 517)]


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return {s: Image.fromarray(rng.integers(0, 255, (s[1], s[0], 3), dtype=np.uint8)) for s in SIZES}


def test_equal_to_open_clip_and_close_to_hf(torch_reference, images):
  _, open_clip = torch_reference
  from transformers import CLIPImageProcessor

  ours = Preprocess(image_size=224)
  theirs = open_clip.image_transform(224, is_train=False)
  hf = CLIPImageProcessor(
    size={"shortest_edge": 224},
    crop_size={"height": 224, "width": 224},
    resample=3,
    image_mean=list(OPENAI_MEAN),
    image_std=list(OPENAI_STD),
  )
  hf_diff = {}
  for size, image in images.items():
    x = ours(image)
    np.testing.assert_array_equal(x, theirs(image).numpy().transpose(1, 2, 0))
    y = hf(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    hf_diff[size] = float(np.abs(x - y).max())
  assert hf_diff[(224, 224)] < 1e-6  # no resize: the same pixels
  for size in [(300, 300), (640, 480), (500, 375)]:
    assert hf_diff[size] < 0.02, hf_diff  # one uint8 level / std
  assert hf_diff[(333, 517)] > 1.0, hf_diff  # a resized shape one pixel off
