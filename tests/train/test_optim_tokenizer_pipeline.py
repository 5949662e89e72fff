"""Optimizer groups, the word tokenizer, and the topology-independent input pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlpt.config import default_config
from vlpt.data.pipeline import train_dataset
from vlpt.data.tokenizers import WordTokenizer, build_tokenizer
from vlpt.optim import build_optimizer, decay_mask, frozen_labels


def toy_params():
  return {"image": {"proj": {"kernel": jnp.ones((4, 3))}, "ln_post": {"scale": jnp.ones(4)}},
          "text": {"token_embedding": jnp.ones((5, 4)), "proj": {"kernel": jnp.ones((4, 3))}},
          "logit_scale": jnp.asarray(2.0)}


def test_decay_mask_skips_vectors_scalars_and_patterns():
  mask = decay_mask(toy_params(), ("embedding",))
  assert mask["image"]["proj"]["kernel"] and mask["text"]["proj"]["kernel"]
  assert not mask["image"]["ln_post"]["scale"] and not mask["logit_scale"]
  assert not mask["text"]["token_embedding"]


def test_freeze_keeps_parameters_and_holds_no_state():
  c = default_config()
  c.total_steps, c.optimizer.warmup_steps, c.optimizer.lr = 10, 0, 0.1
  c.optimizer.freeze = ("^image/",)
  params = toy_params()
  assert frozen_labels(params, c.optimizer.freeze)["image"]["proj"]["kernel"] == "frozen"
  tx = build_optimizer(c, params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert np.array_equal(new["image"]["proj"]["kernel"], params["image"]["proj"]["kernel"])
  assert not np.array_equal(new["text"]["proj"]["kernel"], params["text"]["proj"]["kernel"])
  sizes = sum(x.size for x in jax.tree.leaves(state))
  trainable = sum(x.size for k, x in params.items() if k != "image" for x in jax.tree.leaves(x))
  assert sizes <= 2 * trainable + 8  # adam moments for trainable params (+ counters) only


def test_word_tokenizer_layout():
  tok = WordTokenizer(["a", "red", "circle"], context_length=5)
  ids = tok(["A red circle!", "", "a a a a a a a"])
  assert ids.shape == (3, 5) and ids.dtype == np.int32
  assert list(ids[0]) == [tok.sot_id, 2, 4, 3, tok.eot_id]
  assert list(ids[1]) == [tok.sot_id, tok.eot_id, 0, 0, 0]
  assert ids[2, -1] == tok.eot_id  # truncation keeps EOT last
  assert tok.eot_id == tok.vocab_size - 1 and (ids.argmax(1) == [4, 1, 4]).all()
  assert build_tokenizer({"name": "word", "context_length": 16}).vocab_size > 40
  with pytest.raises(KeyError, match="unknown tokenizer"):
    build_tokenizer({"name": "nope"})


def _batches(process_index, process_count, start_batch=0, n=3, workers=0):
  c = default_config()
  c.data.image_size = 32
  c.data.num_workers = workers
  tok = build_tokenizer(c.data.tokenizer)
  it = iter(train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0,
                          process_index=process_index, process_count=process_count,
                          start_batch=start_batch))
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
  it = iter(train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0, process_index=0,
                          process_count=1))
  next(it)
  state = it.get_state()
  want = next(it)
  fresh = iter(train_dataset(c.data, tokenizer=tok, global_batch=8, seed=0, process_index=0,
                             process_count=1))
  fresh.set_state(state)
  assert np.array_equal(next(fresh)["text"], want["text"])


def test_worker_processes_give_the_same_stream():
  assert all(np.array_equal(a["image"], b["image"])
             for a, b in zip(_batches(0, 1, workers=2), _batches(0, 1)))
