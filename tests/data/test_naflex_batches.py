"""Token-budget NaFlex batches (SigLIP 2, Tschannen et al. 2025, Sec. 2.4.2): every step within the
budget, several sequence lengths per run, the same draws on every process, exact resume."""

import numpy as np
import pytest

from vlpt.data.naflex import TokenBudgetBatches, batch_sizes, naflex_example, sequence_length

P = 4


class Source:
  """Images of many aspect ratios, each filled with its own index (to follow examples)."""

  def __init__(self, n=40):
    rng = np.random.RandomState(0)
    self.shapes = [(int(rng.randint(4, 60)), int(rng.randint(4, 60))) for _ in range(n)]

  def __len__(self):
    return len(self.shapes)

  def __getitem__(self, i):
    return {"image": np.full((*self.shapes[i], 3), i, np.uint8), "caption": f"image {i}"}


def _batches(seed=0, **kw):
  args = dict(patch=P, token_budget=96, lengths=(8, 16, 24), seed=seed, multiple_of=2)
  return TokenBudgetBatches(Source(), **{**args, **kw})


def test_batches_fit_the_budget_at_several_lengths():
  assert batch_sizes(96, (8, 16, 24), 2) == {8: 12, 16: 6, 24: 4}
  with pytest.raises(ValueError, match="raise it"):
    batch_sizes(10, (16,))
  it = _batches(tokenizer=lambda texts: np.asarray([[len(t)] for t in texts]))
  seen, lengths = [], set()
  for _ in range(12):
    batch = next(it)
    b, n, d = batch["pixel_values"].shape
    lengths.add(n)
    assert b * n <= 96 and b % 2 == 0 and d == P * P * 3
    real = batch["pixel_attention_mask"].sum(axis=1)
    np.testing.assert_array_equal(real, batch["spatial_shapes"].prod(axis=1))
    assert (real <= n).all() and (real >= 1).all()
    assert batch["text"].shape == (b, 1)
    # which examples: each image carries its index as its value (normalized: i / 127.5 - 1)
    seen += [int(round((v[0, 0] + 1) * 127.5)) for v in batch["pixel_values"]]
  assert lengths == {8, 16, 24}
  assert sorted(seen[:40]) == list(range(40))  # one epoch visits every example once


def test_same_draws_everywhere_and_exact_resume():
  assert [sequence_length(s, (8, 16, 24), 3) for s in range(20)] == [
    sequence_length(s, (8, 16, 24), 3) for s in range(20)
  ]
  a, b = _batches(seed=1), _batches(seed=1)
  for _ in range(3):
    next(a)
  b.set_state(a.get_state())
  for _ in range(3):
    x, y = next(a), next(b)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert len({sequence_length(s, (8, 16, 24), 3) for s in range(20)}) == 3


def test_example_matches_the_preprocess_of_a_pil_image():
  from PIL import Image

  from vlpt.data.preprocess import Preprocess

  image = np.random.RandomState(1).randint(0, 256, (30, 70, 3), dtype=np.uint8)
  pre = Preprocess(
    image_size=16,
    mean=(0.5,) * 3,
    std=(0.5,) * 3,
    resize_mode="naflex",
    interpolation="bilinear",
    patch_size=P,
    max_num_patches=16,
  )
  want = pre(Image.fromarray(image), max_num_patches=20)
  got = naflex_example(image, patch=P, max_num_patches=20, mean=(0.5,) * 3, std=(0.5,) * 3)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key][0])
