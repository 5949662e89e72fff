"""The topology-independent input pipeline: process shares tile the 1-process global batch,
resume by start batch or iterator state, worker processes give the same stream."""

import numpy as np

from vlpt.config import default_config
from vlpt.data.pipeline import train_dataset
from vlpt.data.tokenizers import build_tokenizer


def _batches(process_index, process_count, start_batch=0, n=3, workers=0):
  c = default_config()
  c.data.image_size = 32
  c.data.num_workers = workers
  tok = build_tokenizer(c.data.tokenizer)
  it = iter(
    train_dataset(
      c.data,
      tokenizer=tok,
      global_batch=8,
      seed=0,
      process_index=process_index,
      process_count=process_count,
      start_batch=start_batch,
    )
  )
  return [next(it) for _ in range(n)]


def test_process_shares_tile_the_global_batch():
  whole = _batches(0, 1)
  halves = [_batches(p, 2) for p in range(2)]
  for step in range(3):
    for key in ("image", "text"):
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      assert np.array_equal(joined, whole[step][key])


def test_start_batch_and_iterator_state_resume():
  whole = _batches(0, 1, n=4)
  assert np.array_equal(_batches(0, 1, start_batch=2, n=1)[0]["image"], whole[2]["image"])
  c = default_config()
  c.data.image_size = 32
  tok = build_tokenizer(c.data.tokenizer)
  it = iter(
    train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0, process_index=0, process_count=1)
  )
  next(it)
  state = it.get_state()
  want = next(it)
  fresh = iter(
    train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0, process_index=0, process_count=1)
  )
  fresh.set_state(state)
  assert np.array_equal(next(fresh)["text"], want["text"])


def test_worker_processes_give_the_same_stream():
  assert all(
    np.array_equal(a["image"], b["image"]) for a, b in zip(_batches(0, 1, workers=2), _batches(0, 1))
  )


def test_boxes_ride_along_and_follow_flips():
  """config.data.train.boxes: each row's boxes are its source example's, mirrored with the image."""
  import pytest

  from vlpt.data.synthetic import CLASS_NAMES, SyntheticCaptions
  from vlpt.errors import ConfigError
  from vlpt.train.validation import validate

  c = default_config()
  c.data.image_size = 32
  c.data.train.flip = True
  tok = build_tokenizer(c.data.tokenizer)
  stream = lambda: iter(  # noqa: E731
    train_dataset(c.data, tokenizer=tok, global_batch=32, seed=0, process_index=0, process_count=1)
  )
  plain = next(stream())
  assert not {"boxes", "box_labels", "box_phrases"} & set(plain)
  c.data.train.boxes = True
  batch = next(stream())
  np.testing.assert_array_equal(batch["image"], plain["image"])  # nothing else changes
  np.testing.assert_array_equal(batch["text"], plain["text"])
  assert batch["boxes"].shape == (32, 2, 4) and batch["boxes"].dtype == np.float32
  assert batch["box_labels"].shape == (32, 2) and batch["box_phrases"].shape == (32, 2, 16)
  source = SyntheticCaptions("train", image_size=32, annotations=True)
  flips = 0
  for row in range(32):  # no shuffle: row i is example i
    ex = source[row]
    flipped = not np.array_equal(batch["image"][row], ex["image"])
    assert np.array_equal(batch["image"][row], ex["image"][:, ::-1] if flipped else ex["image"])
    flips += flipped
    k = len(ex["box_labels"])
    want = ex["boxes"].copy()
    if flipped:
      want[:, [1, 3]] = 1.0 - ex["boxes"][:, [3, 1]]
    np.testing.assert_allclose(batch["boxes"][row, :k], want, atol=1e-6)
    assert batch["box_labels"][row, :k].tolist() == ex["box_labels"].tolist()
    assert [tok.decode(ids) for ids in batch["box_phrases"][row, :k]] == ex["box_phrases"]
    mask = ex["mask"][:, ::-1] if flipped else ex["mask"]
    y0, x0, y1, x1 = np.round(batch["boxes"][row, 0] * 32).astype(int)
    assert (mask[y0:y1, x0:x1] == ex["label"]).sum() == (mask == ex["label"]).sum()
    if k == 1:  # an empty slot: label -1, zero box, padding only
      assert batch["box_labels"][row, 1] == -1 and not batch["boxes"][row, 1].any()
      assert (batch["box_phrases"][row, 1] == tok.pad_id).all()
    assert CLASS_NAMES[batch["box_labels"][row, 0]] == ex["box_phrases"][0]
  assert 4 <= flips <= 28
  c.data.train.source = "wds:/nonexistent/{00000..00001}.tar"
  with pytest.raises(ConfigError, match="boxes=True needs sources"):
    validate(c, num_devices=1)
