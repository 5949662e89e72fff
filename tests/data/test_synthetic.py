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


# sha256 of the pixels and captions of eval examples 0..39 (32 px, seed 0, a distractor in each),
# as drawn before the annotations existed: annotating must not move a pixel.
_PIXELS_SHA256 = "c4279f77c722e3da19de2e9b65564bdee1266efc223645c4e8ee840616efb7e1"


def test_annotations_leave_images_captions_and_labels_unchanged():
  import hashlib

  plain = SyntheticCaptions("eval", image_size=32, distractor_prob=1.0)
  annotated = SyntheticCaptions("eval", image_size=32, distractor_prob=1.0, annotations=True)
  digest = hashlib.sha256()
  for i in range(40):
    a, b = plain[i], annotated[i]
    assert "mask" not in a and "boxes" not in a
    assert np.array_equal(a["image"], b["image"]) and a["captions"] == b["captions"]
    assert a["label"] == b["label"]
    digest.update(b["image"].tobytes())
    digest.update("|".join(b["captions"]).encode())
  assert digest.hexdigest() == _PIXELS_SHA256


def test_boxes_and_mask_locate_the_drawn_objects():
  src = SyntheticCaptions("eval", image_size=32, annotations=True)
  palette = np.asarray(list(COLORS.values()), np.float32)
  with_distractor = 0
  for i in range(200):
    ex = src[i]
    mask, boxes, labels = ex["mask"], ex["boxes"], ex["box_labels"]
    assert mask.shape == (32, 32) and mask.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4) and labels.dtype == np.int32
    assert labels[0] == ex["label"] and len(labels) in (1, 2)
    assert ex["box_phrases"] == [CLASS_NAMES[c] for c in labels]
    assert ex["box_phrases"][0] in ex["caption"]
    assert set(np.unique(mask)) == set(labels.tolist()) | {syn.BACKGROUND}
    with_distractor += len(labels) == 2
    pix = ex["image"].astype(np.float32)
    for c, box in zip(labels, boxes):
      ys, xs = np.nonzero(mask == c)
      # the box is tight around the class's pixels, in pixel-edge coordinates
      np.testing.assert_allclose(box * 32, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
      assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
      # the pixels the mask gives the class are drawn in the class's color
      mean = pix[mask == c].mean(0)
      assert int(np.argmin(((palette - mean) ** 2).sum(1))) == c // len(SHAPES)
    background = pix[mask == syn.BACKGROUND]
    assert np.median(background.max(1) - background.min(1)) < 40  # muted: no object color there
  assert 30 < with_distractor < 100  # distractor_prob 0.3


def test_annotations_deterministic_and_picklable():
  a = SyntheticCaptions("train", seed=1, annotations=True)
  b = pickle.loads(pickle.dumps(SyntheticCaptions("train", seed=1, annotations=True)))
  for i in (0, 9, 12345):
    x, y = a[i], b[i]
    assert np.array_equal(x["mask"], y["mask"]) and np.array_equal(x["boxes"], y["boxes"])
    assert np.array_equal(x["box_labels"], y["box_labels"])
