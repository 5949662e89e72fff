"""The dense_probe task: per-patch labels from object masks, the LDA probe from sufficient
statistics, its metrics, a blind model as the control, and the task inside a training run."""

import os
from collections import Counter

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlpt.config import load_config
from vlpt.errors import ConfigError
from vlpt.evaluation.dense_probe import confusion_metrics, fit_lda, patch_labels, statistics
from vlpt.train.validation import validate

from conftest import REPO
from e2e_utils import cli, env_with_devices, metrics, run

BG = 24


def test_patch_labels_on_a_constructed_mask():
  mask = np.full((2, 8, 8), BG, np.int32)
  # image 0, patches of 4x4 in row-major order: (0,0) (0,1) (1,0) (1,1)
  mask[0, :4, :4].flat[:10] = 3  # 10 of 16 pixels: class 3 over the background
  mask[0, 4:, :4].flat[:8] = 5  # 8 of class 5 against 8 of class 2: a tie, the lower id wins
  mask[0, 4:, :4].flat[8:] = 2
  mask[0, 4:, 4:].flat[:5] = 7  # 5 of class 7, 6 of class 1, 5 background: the plurality
  mask[0, 4:, 4:].flat[5:11] = 1
  mask[1, :4, 4:] = 9  # image 1: only the top right patch is an object
  mask[1, 3, 3] = 9  # one pixel of class 9 in the top left patch is not enough
  got = np.asarray(patch_labels(mask, 4, BG + 1))
  assert got.dtype == np.int32
  assert got.tolist() == [[3, BG, 2, 1], [BG, 9, BG, BG]]
  # against counting every patch's pixels, on random masks of 3 classes with 8x8 patches
  masks = np.random.default_rng(0).integers(0, 3, (3, 16, 24))
  want = [
    [
      min(c for c, n in Counter(m[y : y + 8, x : x + 8].ravel().tolist()).most_common() if n == top)
      for y in range(0, 16, 8)
      for x in range(0, 24, 8)
      for top in [max(Counter(m[y : y + 8, x : x + 8].ravel().tolist()).values())]
    ]
    for m in masks
  ]
  assert np.asarray(patch_labels(masks, 8, 3)).tolist() == want
  with pytest.raises(ValueError, match="whole number"):
    patch_labels(np.zeros((1, 10, 8), np.int32), 4, 2)


def _direct_lda(x, y, k, ridge):
  """Textbook LDA on the data itself (standardize, class means, pooled covariance + ridge)."""
  mu, sd = x.mean(0), x.std(0)
  z = (x - mu) / sd
  counts = np.bincount(y, minlength=k)
  means = np.stack([z[y == c].mean(0) if counts[c] else np.zeros(z.shape[1]) for c in range(k)])
  within = (z - means[y]).T @ (z - means[y]) / len(z) + ridge * np.eye(z.shape[1])
  p = np.linalg.solve(within, means.T)
  prior = np.where(counts > 0, np.log(np.maximum(counts, 1) / len(y)), -np.inf)
  return lambda q: ((q - mu) / sd) @ p - 0.5 * np.sum(means.T * p, 0) + prior


def test_lda_from_batched_statistics_is_the_textbook_lda():
  rng = np.random.default_rng(0)
  k, d, n = 6, 5, 900
  y = rng.choice(5, n, p=[0.6, 0.1, 0.1, 0.1, 0.1])  # class 5 is never seen
  centers = rng.normal(size=(k, d)) * 1.5
  x = (centers[y] + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))) * 3.0 + 7.0
  halves = [
    statistics(jnp.asarray(x[s]), jnp.asarray(y[s]), jnp.ones(len(y[s])), k)
    for s in np.array_split(np.arange(n), 2)
  ]
  stats = jax.tree.map(lambda a, b: np.asarray(a, np.float64) + np.asarray(b), *halves)
  assert stats["n"] == n and stats["sy"].tolist() == np.bincount(y, minlength=k).tolist()
  ridges = (1e-3, 1.0)
  ws, bs = fit_lda(stats, ridges)
  assert ws.shape == (2, d, k) and bs.shape == (2, k)
  test = (centers[rng.integers(0, k, 300)] + rng.normal(size=(300, d))) * 3.0 + 7.0
  for w, b, ridge in zip(ws, bs, ridges):
    ours, want = test @ w + b, _direct_lda(x, y, k, ridge)(test)
    np.testing.assert_allclose(ours[:, :5], want[:, :5], rtol=2e-3, atol=2e-3)
    assert (np.argmax(ours, 1) == np.argmax(want, 1)).mean() > 0.99
    assert (np.argmax(ours, 1) != 5).all()  # an unseen class is never predicted
  # the training data are well separated: the probe classifies them far above the majority class
  assert (np.argmax(x @ ws[0] + bs[0], 1) == y).mean() > 0.8  # the majority class: 0.6


def test_confusion_metrics():
  c = np.array([[5, 1, 0], [0, 2, 2], [1, 0, 9]])  # rows: true class, columns: predicted
  got = confusion_metrics(c, background=2, fit_counts=np.array([3, 1, 20]))
  assert got["accuracy"] == pytest.approx(16 / 20)
  assert got["foreground_accuracy"] == pytest.approx(7 / 10)
  assert got["majority_accuracy"] == pytest.approx(10 / 20)  # always the background
  assert got["miou"] == pytest.approx(np.mean([5 / 7, 2 / 5, 9 / 12]))


def test_sources_without_masks_are_refused():
  c = load_config(os.path.join(REPO, "configs", "demo.py") + ":tiny")
  c.eval.datasets = ml_collections.ConfigDict(
    {"pets": {"source": "tfds:oxford_iiit_pet", "tasks": ("zeroshot", "dense_probe")}}
  )
  with pytest.raises(ConfigError, match="'dense_probe', which needs per-pixel class masks.*synthetic"):
    validate(c, num_devices=8)


def test_a_blind_model_scores_the_majority_and_a_random_one_more():
  """The control: with the patch embedding and positions zeroed every patch token is the same, so
  the probe can only predict the most common class; a random tower's tokens already tell colors
  apart, so it does better (what training should add to is measured on top of that)."""
  from vlpt.train.evaluation import eval_suite
  from vlpt.train.setup import build, initial_state

  c = load_config(os.path.join(REPO, "configs", "demo.py") + ":tiny")
  c.eval.datasets = ml_collections.ConfigDict(
    {"h": {"source": "synthetic", "split": "eval", "num_examples": 96, "tasks": ("dense_probe",)}}
  )
  validate(c, num_devices=jax.device_count())
  setup = build(c)
  params = initial_state(setup).params
  suite = eval_suite(setup)
  random_model = suite(params)
  assert set(random_model) == {
    f"h/dense_probe/{k}"
    for k in ("accuracy", "foreground_accuracy", "miou", "majority_accuracy", "ridge")
  }
  blind_params = jax.tree_util.tree_map_with_path(
    lambda path, x: x * 0 if "patch_embed" in str(path) or "positional_embedding" in str(path) else x,
    params,
  )
  blind = suite(blind_params)
  assert blind["h/dense_probe/accuracy"] == pytest.approx(blind["h/dense_probe/majority_accuracy"])
  assert blind["h/dense_probe/foreground_accuracy"] == 0.0
  assert 0.8 < blind["h/dense_probe/majority_accuracy"] < 0.9  # ~85% of the patches: background
  assert random_model["h/dense_probe/accuracy"] > blind["h/dense_probe/accuracy"] + 0.01
  assert random_model["h/dense_probe/foreground_accuracy"] > 0.1  # chance: 1/24


@pytest.mark.slow
def test_dense_probe_in_a_tiny_training_run(tmp_path, cli_env):
  """vlpt-train's evaluation runs the task (and batches may carry boxes): its metrics land in
  metrics.jsonl under heldout/dense_probe/*, the probe above the majority class."""
  run(
    cli(
      "vlpt.cli.train",
      tmp_path,
      "--config.eval.datasets.heldout.tasks=zeroshot,dense_probe",
      "--config.data.train.boxes=True",
      "--config.data.train.flip=True",
    ),
    env_with_devices(cli_env, 8),
    timeout=600,
  )
  rows = [r for r in metrics(tmp_path) if "heldout/dense_probe/accuracy" in r]
  assert len(rows) == 1 and rows[0]["step"] == 20 and "heldout/zeroshot/top1" in rows[0]
  got = {k.split("/")[-1]: v for k, v in rows[0].items() if "/dense_probe/" in k}
  assert isinstance(got["accuracy"], float) and 0.0 <= got["accuracy"] <= 1.0
  assert got["accuracy"] > got["majority_accuracy"] + 0.01
  assert 0.1 < got["foreground_accuracy"] <= 1.0 and 0.0 < got["miou"] <= 1.0
