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
