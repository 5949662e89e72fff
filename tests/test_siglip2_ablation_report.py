"""benchmarks/siglip2_ablation.py --reuse --seeds: per-seed rows, mean ± std and the acceptance
line computed on the seeds' means (from workdirs' metrics.jsonl, no training)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(workdir, dense, zeroshot, steps=800):
  os.makedirs(workdir)
  rows = [
    {"step": 400, "heldout/zeroshot/top1": 0.0, "heldout/dense_probe/accuracy": 0.0},
    {"step": steps, "heldout/zeroshot/top1": zeroshot, "heldout/dense_probe/accuracy": dense},
  ]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_seeds_are_averaged(tmp_path):
  _fake_run(tmp_path / "sigmoid", dense=0.80, zeroshot=0.40)
  _fake_run(tmp_path / "sigmoid_seed1", dense=0.82, zeroshot=0.30)
  _fake_run(tmp_path / "all", dense=0.90, zeroshot=0.36)
  _fake_run(tmp_path / "all_seed1", dense=0.86, zeroshot=0.34)
  out = subprocess.run(
    [sys.executable, "benchmarks/siglip2_ablation.py", "--root", str(tmp_path)]
    + ["--runs", "sigmoid,all", "--seeds", "0,1", "--reuse"],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert "training" not in out  # every workdir was finished: nothing retrained
  assert "| sigmoid | 1 | 0.8200 |" in out and "| all | 0 | 0.9000 |" in out
  # mean ± sample std of 0.80 and 0.82; the last line: (0.88 - 0.81) and (0.35 - 0.35) in points
  assert "| sigmoid | mean ± std (2) | 0.8100 ± 0.0141 |" in out
  assert out.strip().splitlines()[-1] == "dense_gain_points=7.00 zeroshot_delta_points=0.00"


def _refused(tmp_path, *args) -> str:
  """The benchmark's stderr for arguments it refuses (exit code 2, before any training)."""
  r = subprocess.run(
    [sys.executable, "benchmarks/siglip2_ablation.py", "--root", str(tmp_path), *args],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 2
  return r.stderr


def test_unknown_run_is_refused(tmp_path):
  assert "unknown ['sigmod']" in _refused(tmp_path, "--runs", "sigmod")


def _ablation_module():
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "siglip2_ablation", os.path.join(REPO, "benchmarks", "siglip2_ablation.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_set_overrides_reach_every_run_but_decoder_keys_skip_the_decoderless(tmp_path, monkeypatch):
  module = _ablation_module()
  calls = {}

  def fake_train(config, workdir, overrides):
    calls[config] = overrides
    _fake_run(workdir, dense=0.9, zeroshot=0.3)
    return 0.0

  monkeypatch.setattr(module, "train", fake_train)
  sets = ["--set", "model.embed_dim=128", "--set", "model.decoder.variant=demo"]
  argv = ["x", "--root", str(tmp_path), "--runs", "sigmoid,all", "--seeds", "2", *sets]
  monkeypatch.setattr(sys, "argv", argv)
  module.main()
  assert calls["configs/siglip2.py:demo,sigmoid"] == ["--config.model.embed_dim=128", "--config.seed=2"]
  assert calls["configs/siglip2.py:demo"] == [
    "--config.model.embed_dim=128",
    "--config.model.decoder.variant=demo",
    "--config.seed=2",
  ]
  assert os.path.exists(tmp_path / "all_seed2" / "metrics.jsonl")


def test_malformed_set_is_refused(tmp_path):
  assert "--set 'seed': expected KEY=VALUE" in _refused(tmp_path, "--set", "seed")
