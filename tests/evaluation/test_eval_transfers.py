"""Evaluation keeps embeddings on the devices while it reads a set and fetches them once."""

import os

import jax
import numpy as np

from vlpt.config import load_config
from vlpt.evaluation.datasets import stream_images
from vlpt.train.evaluation import eval_suite
from vlpt.train.setup import build, initial_state

from conftest import REPO


def test_image_embeddings_are_fetched_once_per_set(monkeypatch):
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.eval.datasets.heldout.num_examples = 100  # not a whole number of 64-image batches
  setup = build(config)
  params = initial_state(setup).params
  suite = eval_suite(setup)
  heldout = suite.datasets[0]
  enc, n, batch = suite.encoders, heldout.num_examples, config.eval.batch_size
  # No fetch while the set streams: on CPU, jax's transfer guard does not see np.asarray /
  # device_get (zero-copy), so every conversion of a device array to numpy is made to raise.
  array_type = type(params["logit_scale"])

  def no_fetch(*args, **kwargs):
    raise AssertionError("a device array was fetched to the host while streaming")

  with monkeypatch.context() as m:
    m.setattr(array_type, "__array__", no_fetch)
    m.setattr(jax, "device_get", no_fetch)
    embeddings, labels = enc.embed_stream(params, heldout.reader, n, batch, with_labels=True)
  assert all(isinstance(e, jax.Array) for e in embeddings + labels)
  assert len(embeddings) == 2 and embeddings[0].shape == (64, config.model.embed_dim)
  got, got_labels = enc.read_images(params, heldout.reader, n, batch, with_labels=True)
  # the same numbers as fetching every batch and keeping its valid rows
  expected, expected_labels = [], []
  for images, batch_labels, valid in stream_images(
    heldout.reader, n, mesh=setup.mesh, global_batch=batch, with_labels=True
  ):
    expected.append(np.asarray(enc._image(params, images))[:valid])
    expected_labels.append(np.asarray(batch_labels)[:valid])
  np.testing.assert_array_equal(got, np.concatenate(expected))
  np.testing.assert_array_equal(got_labels, np.concatenate(expected_labels))
  assert got.shape == (100, config.model.embed_dim)
