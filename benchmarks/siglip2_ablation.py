#!/usr/bin/env python3
"""The SigLIP 2 ablation on the built-in data: sigmoid; + LocCa; + self-distillation and masked
prediction (``configs/siglip2.py:demo,sigmoid`` / ``:demo,locca`` / ``:demo``), and the NaFlex run
(``:demo,sigmoid,naflex``) at three sequence lengths.

  python benchmarks/siglip2_ablation.py --root DIR [--runs sigmoid,locca,all,naflex] [--reuse]
                                       [--steps N]

Each run trains with ``vlpt-train`` into ``DIR/<run>`` (the same seed, steps and batch: only the
losses differ) and the script prints the final held-out figures from each ``metrics.jsonl``:
the dense per-patch probe (accuracy, foreground accuracy, mIoU; docs/evaluation.md), zero-shot
top-1, retrieval R@5 and, for runs with a LocCa decoder, greedy captions' CIDEr-D against their
own images' references and against shuffled ones. ``--reuse`` reads a run whose workdir already
holds its final step instead of training it again. ``--steps N`` shortens every run alike
(``total_steps``, evaluation and checkpoint at the end; the stage still starts at 80%). The
last line is
``dense_gain_points=<all - sigmoid, accuracy x 100> zeroshot_delta_points=<all - sigmoid>``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", required=True, help="the runs' workdirs go here")
  p.add_argument("--runs", default="sigmoid,locca,all,naflex")
  p.add_argument("--reuse", action="store_true", help="read finished workdirs instead of training")
  p.add_argument("--steps", type=int, default=None, help="every run's total_steps")
  args = p.parse_args()
  overrides = []
  if args.steps:
    overrides = [f"--config.{k}={args.steps}" for k in ("total_steps", "eval_every_steps")]
    overrides.append(f"--config.checkpoint_every_steps={args.steps}")
  sys.path.insert(0, REPO)
  from vlpt.config import load_config

  results = {}
  for run in args.runs.split(","):
    config = RUNS[run]
    workdir = os.path.join(args.root, run)
    steps = args.steps or int(load_config(config).total_steps)
    if not (args.reuse and finished(workdir, steps)):
      print(f"training {config} into {workdir}: {train(config, workdir, overrides):.0f} s", flush=True)
    results[run] = final_metrics(workdir)

  print("| run | config | " + " | ".join(name for name, _ in COLUMNS) + " |")
  print("|---|---|" + "---|" * len(COLUMNS))
  for run, m in results.items():
    cells = [f"{m[key]:.4f}" if key in m else "-" for _, key in COLUMNS]
    print(f"| {run} | `{RUNS[run]}` | " + " | ".join(cells) + " |")
  if "naflex" in results:
    m = results["naflex"]
    print("\nNaFlex run, held-out at three sequence lengths:")
    print("| eval set | patches | zero-shot top-1 | dense acc | dense mIoU |")
    print("|---|---|---|---|---|")
    keys = ("zeroshot/top1", "dense_probe/accuracy", "dense_probe/miou")
    for name, patches in (("heldout_16px", 16), ("heldout_24px", 36), ("heldout", 64)):
      cells = ["-" if m.get(f"{name}/{k}") is None else f"{m[f'{name}/{k}']:.4f}" for k in keys]
      print(f"| {name} | {patches} | " + " | ".join(cells) + " |")
  if "all" in results and "sigmoid" in results:
    a, s = results["all"], results["sigmoid"]
    gain = 100 * (a["heldout/dense_probe/accuracy"] - s["heldout/dense_probe/accuracy"])
    delta = 100 * (a["heldout/zeroshot/top1"] - s["heldout/zeroshot/top1"])
    print(f"dense_gain_points={gain:.2f} zeroshot_delta_points={delta:.2f}")


if __name__ == "__main__":
  main()
