"""Linear probe: learns separable features, matches CLIP_benchmark's torch implementation."""

import math

import numpy as np
import pytest

from vlpt.evaluation.linear_probe import WEIGHT_DECAYS, linear_probe, search_weight_decay

from conftest import require
from references import patch_clip_benchmark_probe_for_cpu, run_clip_benchmark_probe


def gaussian_classes(seed, n, dim, num_classes, noise, label_noise=0.0, means=None):
  """Unit-normalized noisy class means; a share ``label_noise`` of labels redrawn at random."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(num_classes, dim)) if means is None else means
  y = rng.integers(0, num_classes, n)
  x = means[y] + noise * rng.normal(size=(n, dim))
  y = np.where(rng.random(n) < label_noise, rng.integers(0, num_classes, n), y)
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y, means


def test_separable_features_reach_100_percent():
  x, y, means = gaussian_classes(0, 600, 32, 10, noise=0.1)
  xt, yt, _ = gaussian_classes(1, 300, 32, 10, noise=0.1, means=means)
  out = linear_probe(x, y, xt, yt, num_classes=10, seed=0)
  assert set(out) == {"top1", "top5", "mean_per_class_recall", "weight_decay"}
  assert out["top1"] == 1.0 and out["top5"] == 1.0 and out["mean_per_class_recall"] == 1.0
  assert out["weight_decay"] in WEIGHT_DECAYS


def test_deterministic_and_options():
  x, y, means = gaussian_classes(2, 200, 16, 4, noise=1.0)
  xt, yt, _ = gaussian_classes(3, 100, 16, 4, noise=1.0, means=means)
  a = linear_probe(x, y, xt, yt, num_classes=4, seed=3)
  b = linear_probe(x, y, xt, yt, num_classes=4, seed=3)
  assert a == pytest.approx(b, nan_ok=True)
  assert math.isnan(a["top5"])  # largest test label < 5: no top-5, as CLIP_benchmark
  assert 0.25 < a["top1"] <= 1.0
  # no validation split: no search, decay 0 (CLIP_benchmark without --val_proportion)
  assert linear_probe(x, y, xt, yt, num_classes=4, val_proportion=None)["weight_decay"] == 0.0
  with pytest.raises(ValueError, match="num_classes"):
    linear_probe(x, y, xt, yt, num_classes=3)
  with pytest.raises(ValueError, match="val_labels"):
    linear_probe(x, y, xt, yt, num_classes=4, val_features=x)


@pytest.fixture
def clip_benchmark_linear_probe(monkeypatch):
  """CLIP_benchmark's ``linear_probe`` module, made to run on CPU torch."""
  torch = require("torch")
  require("clip_benchmark.metrics.linear_probe")
  return torch, patch_clip_benchmark_probe_for_cpu(monkeypatch, torch)


def test_search_equals_clip_benchmarks_on_the_same_accuracies(clip_benchmark_linear_probe, tmp_path):
  """Same validation accuracies (plateaus and ties included) -> the same chosen decay."""
  torch, lp = clip_benchmark_linear_probe
  n_val = 50
  chosen = []
  for trial in range(8):
    rng = np.random.default_rng(trial)
    i = np.arange(len(WEIGHT_DECAYS))
    if trial == 0:
      table = np.full(len(i), 0.4)  # flat: every comparison is a tie
    elif trial == 1:
      table = rng.random(len(i))  # no structure
    else:  # a peak somewhere, noisy, on a coarse scale: plateaus and exact ties near the top
      center, width = rng.uniform(0, 96), rng.uniform(5, 40)
      table = 0.8 - 0.5 * ((i - center) / width) ** 2 + rng.normal(0, 0.02, len(i))
    table = np.round(np.clip(table, 0, 1) * n_val / 2) * 2 / n_val

    def fake_train(dataloader, input_shape, output_shape, weight_decay, *args):
      return WEIGHT_DECAYS.index(weight_decay)

    def fake_infer(model, dataloader, amp, device, table=table):
      hits = int(round(table[model] * n_val))
      target = torch.zeros(n_val, dtype=torch.long)
      logits = torch.zeros(n_val, 2)
      logits[:hits, 0] = 1.0
      logits[hits:, 1] = 1.0
      return logits, target

    x = np.ones((n_val, 2), np.float32)
    y = np.zeros(n_val, np.int64)
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(lp, "train", fake_train)
      mp.setattr(lp, "infer", fake_infer)
      run_dir = tmp_path / str(trial)
      run_dir.mkdir()
      ref = run_clip_benchmark_probe(
        torch, lp, run_dir, {"train": (x, y), "val": (x, y), "test": (x, y)}
      )
    ours = search_weight_decay(len(WEIGHT_DECAYS), lambda idx, table=table: [table[i] for i in idx])
    assert WEIGHT_DECAYS[ours] == ref["weight_decay"], trial
    chosen.append(ours)
  assert len(set(chosen)) >= 6, chosen  # the cases exercise different paths
