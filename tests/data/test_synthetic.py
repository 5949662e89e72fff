"""The built-in dataset: deterministic, labelled correctly, drawable, and covered by its vocabulary."""

import pickle

import numpy as np
import pytest

from vlpt.data import synthetic as syn
from vlpt.data.synthetic import CLASS_NAMES, COLORS, SHAPES, SyntheticCaptions


def test_deterministic_and_split_disjoint():
  a, b = SyntheticCaptions("train", seed=3), SyntheticCaptions("train", seed=3)
  for i in (0, 17, 2**31 - 2):
    x, y = a[i], b[i]
    assert np.array_equal(x["image"], y["image"]) and x["captions"] == y["captions"]
  ev = SyntheticCaptions("eval", seed=3)
  assert not np.array_equal(a[5]["image"], ev[5]["image"])
  assert not np.array_equal(a[5]["image"], SyntheticCaptions("train", seed=4)[5]["image"])
  assert len(a) == 2**31 - 1 and len(ev) == 1024 and len(SyntheticCaptions("test")) == 1024


def test_captions_name_the_labelled_class():
  src = SyntheticCaptions("eval", image_size=32)
  seen = set()
  for i in range(300):
    ex = src[i]
    color, shape = CLASS_NAMES[ex["label"]].split()
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert len(ex["captions"]) == 5 and ex["caption"] == ex["captions"][0]
    for caption in ex["captions"]:
      assert f"{color} {shape}" in caption  # the main object, always named first
      words = caption.split()
      assert words.index(color) == min(words.index(c) for c in COLORS if c in words)
    seen.add(int(ex["label"]))
  assert len(seen) == len(CLASS_NAMES)


def test_main_object_color_is_drawn():
  """The most saturated pixels are close to the labelled color for nearly every image."""
  src = SyntheticCaptions("eval", image_size=64, distractor_prob=0.0)
  palette = np.asarray(list(COLORS.values()), np.float32)
  correct = 0
  for i in range(100):
    ex = src[i]
    pix = ex["image"].reshape(-1, 3).astype(np.float32)
    sat = pix.max(1) - pix.min(1)
    obj = pix[sat >= np.percentile(sat, 95)].mean(0)
    nearest = int(np.argmin(((palette - obj) ** 2).sum(1)))
    correct += nearest == ex["label"] // len(SHAPES)
  assert correct >= 95


def test_shapes_differ():
  masks = {s: syn.shape_mask(s, 32, 16, 16, 10) for s in SHAPES}
  areas = {s: int(m.sum()) for s, m in masks.items()}
  assert len(set(areas.values())) == len(SHAPES)
  for s in SHAPES:
    for t in SHAPES:
      if s != t:
        assert (masks[s] ^ masks[t]).sum() > 20


def test_vocabulary_covers_captions_and_prompts():
  vocab = set(syn.VOCABULARY)
  src = SyntheticCaptions("train")
  for i in range(500):
    for caption in src[i]["captions"]:
      assert set(caption.split()) <= vocab, caption
  for template in syn.PROMPT_TEMPLATES:
    for name in CLASS_NAMES:
      assert set(template.format(name).replace(".", "").split()) <= vocab


def test_picklable_and_validates():
  src = pickle.loads(pickle.dumps(SyntheticCaptions("eval", num_examples=10)))
  assert len(src) == 10
  with pytest.raises(IndexError):
    src[10]
  with pytest.raises(ValueError, match="unknown split"):
    SyntheticCaptions("validation")
  with pytest.raises(ValueError, match="image_size"):
    SyntheticCaptions(image_size=8)
  with pytest.raises(ValueError, match="distractor_prob"):
    SyntheticCaptions(distractor_prob=1.5)
