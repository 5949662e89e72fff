"""Exact mid-epoch resume with grain worker processes, for every source type; disjoint process
shares that cover an epoch, for every file format."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data_formats import FORMATS, write_set

from vlpt.config import default_config

from e2e_utils import data_stream

SOURCES = ("synthetic", "tfds") + FORMATS


class VlptResumeCaptions(tfds.core.GeneratorBasedBuilder):
  """20 constant images (value k, varied widths) with captions 'sample k' / 'photo k'."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "captions": tfds.features.Sequence(tfds.features.Text()),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from PIL import Image

    for k in range(20):
      yield (
        k,
        {
          "image": Image.fromarray(np.full((32, 36 + 4 * (k % 3), 3), k, np.uint8)),
          "captions": [f"sample {k}", f"photo {k}"],
        },
      )


def _config(kind, tmp_path, workers):
  c = default_config()
  c.data.image_size = 32
  c.data.num_workers = workers
  c.data.train.shuffle = True
  c.data.train.crop_scale = (0.5, 1.0)
  c.data.train.flip = True
  c.data.train.color_jitter = 0.3
  if kind == "synthetic":
    c.data.train.source = "synthetic"
  elif kind == "tfds":
    VlptResumeCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    c.data.train.source = "tfds:vlpt_resume_captions"
    c.data.tfds_data_dir = str(tmp_path)
  else:  # 20 examples, one of them unusable (replaced, counted in skips)
    c.data.train.source = write_set(kind, tmp_path, 20, 6, bad={7: "garbage"})
  return c


@pytest.mark.parametrize("kind", SOURCES)
def test_mid_epoch_resume_with_workers(tmp_path, kind):
  """State taken after 3 batches (24 examples: mid-epoch of 20, past one boundary); a fresh
  iterator with 2 workers restored from it yields exactly the uninterrupted batches 4..8."""
  c = _config(kind, tmp_path, workers=2)
  it = data_stream(c)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(5)]  # crosses two more epoch boundaries
  it.close()
  fresh = data_stream(c)
  fresh.set_state(state)
  for w in want:
    got = next(fresh)
    assert sorted(got) == sorted(w)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key], err_msg=f"{kind}: {key}")
  fresh.close()
  if kind in FORMATS:  # the bad example is replaced (and counted) the same way after resume
    assert sum(int(b["skips"].sum()) for b in want) >= 1


@pytest.mark.parametrize("kind", ("tfds",) + FORMATS)
def test_process_shares_are_disjoint_and_cover_an_epoch(tmp_path, kind):
  """Processes 0 and 1 of 2 each read half of every global batch: over one epoch (20 examples
  = 5 global batches of 4) together they see every example exactly once."""
  c = _config(kind, tmp_path, workers=0)
  c.data.train.crop_scale = (1.0, 1.0)
  c.data.train.color_jitter = 0.0
  if kind in FORMATS:  # no bad example here: every index is its own sample
    c.data.train.source = write_set(kind, tmp_path / "clean", 20, 6)
  seen = []
  for p in range(2):
    it = data_stream(c, p, 2, batch=4)
    values = np.concatenate([next(it)["image"][:, 0, 0, 0] for _ in range(5)])
    assert len(values) == 10
    seen.append(values)
  assert not set(seen[0].tolist()) & set(seen[1].tolist())  # (a flip keeps them constant)
  assert sorted(np.concatenate(seen).tolist()) == list(range(20))
