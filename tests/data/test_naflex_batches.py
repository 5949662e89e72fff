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


# ---- NaflexStream: what vlpt-train reads (config.data.train.naflex) ----------------------------


class Square:
  """Square 32 px images filled with their index: the aspect ratios come from the crops."""

  def __getitem__(self, q):
    return {"image": np.full((32, 32, 3), q % 251, np.uint8), "caption": f"image {q}"}


def _stream(p=0, count=1, **kw):
  from vlpt.data.naflex import NaflexStream

  args = dict(
    tokenizer=lambda texts: np.asarray([[int(t.split()[1])] for t in texts]),
    patch=4,
    token_budget=256,
    lengths=(16, 36, 64),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    seed=3,
    process_index=p,
    process_count=count,
    multiple_of=4,
  )
  return NaflexStream(Square(), **{**args, **kw})


def test_stream_shares_make_the_single_process_batch():
  whole = _stream()
  shares = [_stream(p, 2) for p in range(2)]
  for _ in range(6):
    want = next(whole)
    got = [next(s) for s in shares]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key], err_msg=key)
    n = want["pixel_values"].shape[1]
    assert want["pixel_values"].shape[0] == {16: 16, 36: 4, 64: 4}[n]  # 256 // n, multiple of 4


def test_stream_crops_keep_mixed_aspect_ratios_and_resume_exactly():
  it = _stream(aspect_ratios=(0.5, 2.0), crop_scale=(0.5, 1.0))
  ratios = []
  batches = [next(it) for _ in range(8)]
  for batch in batches:
    rows, cols = batch["spatial_shapes"].T
    assert ((rows * cols) == batch["pixel_attention_mask"].sum(1)).all()
    assert (rows * cols <= batch["pixel_values"].shape[1]).all()
    ratios += (cols / rows).tolist()
  assert min(ratios) < 0.8 and max(ratios) > 1.25  # portrait and landscape grids
  texts = np.concatenate([b["text"][:, 0] for b in batches])
  assert texts.tolist() == list(range(len(texts)))  # consecutive stream positions
  state = it.get_state()
  want = next(it)
  resumed = _stream(aspect_ratios=(0.5, 2.0), crop_scale=(0.5, 1.0), start_step=8)
  assert resumed.get_state() == state
  fresh = _stream(aspect_ratios=(0.5, 2.0), crop_scale=(0.5, 1.0))
  fresh.set_state(state)
  for other in (resumed, fresh):
    got = next(other)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_naflex_training_config_errors():
  from vlpt.config import load_config
  from vlpt.errors import ConfigError
  from vlpt.train.validation import validate

  c = load_config("configs/siglip2.py:demo,sigmoid,naflex")
  validate(c, num_devices=8)
  c.model.image.naflex = False
  with pytest.raises(ConfigError, match="config.model.image.naflex=True"):
    validate(c, num_devices=8)
  c = load_config("configs/siglip2.py:demo,sigmoid,naflex")
  c.data.train.naflex.token_budget = 64 * 4
  with pytest.raises(ConfigError, match="fewer than 8 examples .* length 36; raise it to at least 288"):
    validate(c, num_devices=8)
  c = load_config("configs/siglip2.py:demo,sigmoid")
  c.eval.datasets.heldout.image_size = 24
  with pytest.raises(ConfigError, match="only a NaFlex image tower"):
    validate(c, num_devices=8)
  with pytest.raises(ValueError, match="demo,sigmoid,naflex"):
    load_config("configs/siglip2.py:demo,naflex")
