"""SigLIP 2's local views (TrainTransform local_crops, for self-distillation): uint8 crops of the
configured size, keyed by (seed, position) like the other random choices, absent unless the
local-to-global term is on (local_crop_settings)."""

import numpy as np

from vlpt.config import default_config
from vlpt.data.pipeline import TrainTransform, local_crop_settings
from vlpt.data.tokenizers import build_tokenizer


def test_local_views_are_keyed_by_seed_and_position():
  tok = build_tokenizer(default_config().data.tokenizer)
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  example = {"image": image, "caption": "a photo"}
  t = TrainTransform(tok, seed=0, local_crops=3, local_size=16, local_scale=(0.05, 0.4))
  out = t((5, example))
  views = out["local_images"]
  assert views.shape == (3, 16, 16, 3) and views.dtype == np.uint8
  assert np.array_equal(out["image"], image)  # the global view is untouched
  assert np.array_equal(views, t((5, example))["local_images"])  # the same position: the same crops
  assert not np.array_equal(views, t((6, example))["local_images"])
  other_seed = TrainTransform(tok, seed=1, local_crops=3, local_size=16)
  assert not np.array_equal(views, other_seed((5, example))["local_images"])
  assert len({v.tobytes() for v in views}) == 3  # each view its own crop
  assert "local_images" not in TrainTransform(tok, seed=0)((5, example))


def test_local_crop_settings_follow_the_local_to_global_weight():
  c = default_config()
  assert local_crop_settings(c) == {}
  c.self_distillation.masked_weight = 0.25  # masked prediction alone reads the global view only
  assert local_crop_settings(c) == {}
  c.self_distillation.weight = 1.0
  c.self_distillation.local_crops, c.self_distillation.local_size = 2, 16
  assert local_crop_settings(c) == {"local_crops": 2, "local_size": 16, "local_scale": (0.05, 0.4)}
