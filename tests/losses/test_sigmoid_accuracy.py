"""The sigmoid gather loss takes both in-batch accuracies from the pass that computes the loss:
the values are the whole-batch ones, and the only all-gather (and the only matmul) in its program
is the loss's own."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlpt import sharding as S
from vlpt.losses.contrastive import sigmoid_contrastive_sharded


def embeddings(b=32, d=16, noise=1.5, seed=0):
  """Text = image + noise, normalized: some pairs are retrieved, some not, and the two
  directions differ."""
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(b, d))
  txt = img + noise * rng.normal(size=(b, d))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img.astype(np.float32), txt.astype(np.float32)


def sharded(mesh, with_loss=True):
  spec = P(S.BATCH_AXES)

  def fn(i, t, s, b):
    loss, metrics = sigmoid_contrastive_sharded(i, t, s, b, S.BATCH_AXES)
    return (loss, metrics) if with_loss else metrics

  return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P())


@pytest.mark.parametrize("mesh_shape", [dict(data=8), dict(data=2, fsdp=4)])
def test_accuracies_equal_the_whole_batch_ones(mesh_shape):
  img, txt = embeddings()
  scale, bias = np.float32(10.0), np.float32(-10.0)
  logits = scale * img.astype(np.float64) @ txt.T.astype(np.float64) + bias
  labels = np.arange(len(img))
  want_i2t = np.mean(np.argmax(logits, axis=1) == labels)
  want_t2i = np.mean(np.argmax(logits, axis=0) == labels)
  assert 0 < want_i2t < 1 and 0 < want_t2i < 1 and want_i2t != want_t2i  # a telling case
  _, metrics = jax.jit(sharded(S.make_mesh(mesh_shape)))(img, txt, scale, bias)
  assert float(metrics["i2t_acc"]) == want_i2t
  assert float(metrics["t2i_acc"]) == want_t2i


def _count(text, op):
  return len(re.findall(rf"stablehlo\.{op}\b", text))


def test_one_all_gather_and_one_matmul_per_step():
  """Forward, and forward + backward: the text gather feeds the loss and both accuracies; no
  image gather and no second b x B matmul only for the text->image accuracy."""
  mesh = S.make_mesh(dict(data=2, fsdp=4))
  img, txt = embeddings()
  args = (img, txt, jnp.float32(10.0), jnp.float32(-10.0))
  forward = jax.jit(sharded(mesh)).lower(*args).as_text()
  assert _count(forward, "all_gather") == 1
  assert _count(forward, "dot_general") == 1

  def loss(i, t, s, b):
    value, metrics = sharded(mesh)(i, t, s, b)
    return value, metrics

  both = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)).lower(*args)
  assert _count(both.as_text(), "all_gather") == 1
  compiled = both.compile().as_text()  # and after XLA's passes
  assert len(re.findall(r"\ball-gather(?:-start)?\(", compiled)) == 1
