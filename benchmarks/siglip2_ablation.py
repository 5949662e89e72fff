#!/usr/bin/env python3
"""The SigLIP 2 ablation on the built-in data: sigmoid; + LocCa; + self-distillation and masked
prediction (``configs/siglip2.py:demo,sigmoid`` / ``:demo,locca`` / ``:demo``), and the NaFlex run
(``:demo,sigmoid,naflex``) at three sequence lengths.

  python benchmarks/siglip2_ablation.py --root DIR [--runs sigmoid,locca,all,naflex] [--reuse]
                                       [--steps N] [--seeds 0,1,2] [--set KEY=VALUE ...]

Each run trains with ``vlpt-train`` into ``DIR/<run>`` (the same seeds, steps and batch: only the
losses differ) and the script prints the final held-out figures from each ``metrics.jsonl``:
the dense per-patch probe (accuracy, foreground accuracy, mIoU; docs/evaluation.md), zero-shot
top-1, retrieval R@5 and, for runs with a LocCa decoder, greedy captions' CIDEr-D against their
own images' references and against shuffled ones. ``--reuse`` reads a run whose workdir already
holds its final step instead of training it again. ``--steps N`` shortens every run alike
(``total_steps``, evaluation and checkpoint at the end; the stage still starts at 80%).

``--seeds`` trains every run once per seed (``config.seed``; seed 0 in ``DIR/<run>``, seed k in
``DIR/<run>_seed<k>``) and prints each seed's row, then the mean and the sample standard
deviation over seeds: at the demo's size, one seed's held-out zero-shot top-1 moves by several
points from seed to seed (docs/recipes.md), more than the differences the ablation asks about, so
a single-seed comparison says little. ``--set KEY=VALUE`` (repeatable) overrides a config key in
every run alike, e.g. wider towers: ``--set model.image.variant=demo/4 --set
model.text.variant=demo --set model.embed_dim=128 --set model.decoder.variant=demo`` (the sigmoid
run has no decoder: keys under ``model.decoder`` are left out of it). The last line compares the
seeds' means:
``dense_gain_points=<all - sigmoid, accuracy x 100> zeroshot_delta_points=<all - sigmoid>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
  "sigmoid": "configs/siglip2.py:demo,sigmoid",
  "locca": "configs/siglip2.py:demo,locca",
  "all": "configs/siglip2.py:demo",
  "naflex": "configs/siglip2.py:demo,sigmoid,naflex",
}
COLUMNS = (
  ("dense acc", "heldout/dense_probe/accuracy"),
  ("dense fg acc", "heldout/dense_probe/foreground_accuracy"),
  ("dense mIoU", "heldout/dense_probe/miou"),
  ("zero-shot top-1", "heldout/zeroshot/top1"),
  ("i2t R@5", "heldout/retrieval/i2t_r5"),
  ("t2i R@5", "heldout/retrieval/t2i_r5"),
  ("CIDEr-D", "heldout/captioning/cider"),
  ("CIDEr-D shuffled", "heldout/captioning/cider_shuffled"),
)


def final_metrics(workdir: str) -> dict[str, float]:
  """The last value of every metric in ``workdir/metrics.jsonl`` (a resumed run logs steps again:
  the last line wins)."""
  out: dict[str, float] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out.update({k: v for k, v in record.items() if isinstance(v, (int, float))})
  return out


def finished(workdir: str, steps: int) -> bool:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return any(json.loads(line).get("step") == steps and "heldout/zeroshot/top1" in line for line in f)


def train(config: str, workdir: str, overrides: list[str]) -> float:
  t0 = time.perf_counter()
  subprocess.run(
    [sys.executable, "-m", "vlpt.cli.train", "--config", config, "--workdir", workdir, *overrides],
    check=True,
    cwd=REPO,
  )
  return time.perf_counter() - t0


def workdir_of(root: str, run: str, seed: int) -> str:
  return os.path.join(root, run if seed == 0 else f"{run}_seed{seed}")


def mean_std(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def print_table(results: dict[str, dict[int, dict[str, float]]]) -> None:
  """One row per run and seed; with several seeds, then one row per run of mean ± std."""
  print("| run | seed | " + " | ".join(name for name, _ in COLUMNS) + " |")
  print("|---|---|" + "---|" * len(COLUMNS))
  for run, by_seed in results.items():
    for seed, m in by_seed.items():
      cells = [f"{m[key]:.4f}" if key in m else "-" for _, key in COLUMNS]
      print(f"| {run} | {seed} | " + " | ".join(cells) + " |")
  if any(len(by_seed) > 1 for by_seed in results.values()):
    for run, by_seed in results.items():
      cells = []
      for _, key in COLUMNS:
        values = [m[key] for m in by_seed.values() if key in m]
        cells.append(mean_std(values) if values else "-")
      print(f"| {run} | mean ± std ({len(by_seed)}) | " + " | ".join(cells) + " |")


def print_naflex(m: dict[str, float]) -> None:
  print("\nNaFlex run, held-out at three sequence lengths:")
  print("| eval set | patches | zero-shot top-1 | dense acc | dense mIoU |")
  print("|---|---|---|---|---|")
  keys = ("zeroshot/top1", "dense_probe/accuracy", "dense_probe/miou")
  for name, patches in (("heldout_16px", 16), ("heldout_24px", 36), ("heldout", 64)):
    cells = ["-" if m.get(f"{name}/{k}") is None else f"{m[f'{name}/{k}']:.4f}" for k in keys]
    print(f"| {name} | {patches} | " + " | ".join(cells) + " |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", required=True, help="the runs' workdirs go here")
  p.add_argument("--runs", default="sigmoid,locca,all,naflex")
  p.add_argument("--reuse", action="store_true", help="read finished workdirs instead of training")
  p.add_argument("--steps", type=int, default=None, help="every run's total_steps")
  p.add_argument("--seeds", default="0", help="config.seed values (comma-separated)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = args.runs.split(",")
  unknown = [r for r in runs if r not in RUNS]
  if unknown:
    p.error(f"--runs: unknown {unknown}; choose from {sorted(RUNS)}")
  overrides = []
  if args.steps:
    overrides = [f"--config.{k}={args.steps}" for k in ("total_steps", "eval_every_steps")]
    overrides.append(f"--config.checkpoint_every_steps={args.steps}")
  for item in args.set:
    key, sep, _ = item.partition("=")
    if not sep or not key:
      p.error(f"--set {item!r}: expected KEY=VALUE, e.g. model.embed_dim=128")
  sys.path.insert(0, REPO)
  from vlpt.config import load_config

  results: dict[str, dict[int, dict[str, float]]] = {}
  for run in runs:
    config = RUNS[run]
    steps = args.steps or int(load_config(config).total_steps)
    for seed in seeds:
      workdir = workdir_of(args.root, run, seed)
      no_decoder = run in ("sigmoid", "naflex")
      sets = [f"--config.{s}" for s in args.set if not (no_decoder and s.startswith("model.decoder."))]
      if not (args.reuse and finished(workdir, steps)):
        seconds = train(config, workdir, [*overrides, *sets, f"--config.seed={seed}"])
        print(f"training {config} (seed {seed}) into {workdir}: {seconds:.0f} s", flush=True)
      results.setdefault(run, {})[seed] = final_metrics(workdir)

  print_table(results)
  if "naflex" in results:
    print_naflex(results["naflex"][seeds[0]])
  if "all" in results and "sigmoid" in results:

    def mean(run: str, key: str) -> float:
      return statistics.mean(m[key] for m in results[run].values())

    dense, zeroshot = "heldout/dense_probe/accuracy", "heldout/zeroshot/top1"
    gain = 100 * (mean("all", dense) - mean("sigmoid", dense))
    delta = 100 * (mean("all", zeroshot) - mean("sigmoid", zeroshot))
    print(f"dense_gain_points={gain:.2f} zeroshot_delta_points={delta:.2f}")


if __name__ == "__main__":
  main()
