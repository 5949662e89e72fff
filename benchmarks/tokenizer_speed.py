#!/usr/bin/env python3
"""CLIP BPE tokenization speed: vlpt's tokenizers vs open_clip's, on the same captions.

  python benchmarks/tokenizer_speed.py [--n 20000] [--repeats 3]

Captions are drawn from the built-in dataset's caption grammar plus random words and numbers
(so the per-word cache does not see only repeats). Every timed run is *cold*: a fresh Python
process builds the tokenizer and tokenizes the captions once, so no module-level cache (vlpt's
merges table and split pattern, open_clip's byte table) survives from an earlier run. The modules
themselves (and ftfy and regex, which both sides use) are imported before the clock starts. Runs
are interleaved across the tokenizers and the median is reported. The last line is
machine-readable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("vlpt_clip_bpe", "vlpt_hf", "open_clip")


def captions(n: int) -> list[str]:
  import numpy as np

  from vlpt.data.synthetic import SyntheticCaptions

  data = SyntheticCaptions("train", image_size=16)
  rng = np.random.default_rng(0)
  letters = list("abcdefghijklmnopqrstuvwxyzéüß")
  out = []
  for i in range(n):
    extra = " ".join("".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(3))
    out.append(f"{data[i % 1000]['caption']} {extra} {rng.integers(0, 10**6)}")
  return out


def worker(name: str, n: int, vocab_dir: str) -> None:
  """One cold run in this (fresh) process: prints the seconds to build and tokenize."""
  texts = captions(n)
  import ftfy  # noqa: F401  (both sides clean text with ftfy; its import is not tokenization)
  import regex  # noqa: F401

  if name == "open_clip":
    from vlpt.reference import import_torch_reference

    _, open_clip = import_torch_reference()
    run = lambda: open_clip.tokenizer.SimpleTokenizer()(texts)  # noqa: E731
  else:
    from vlpt.data.tokenizers import ClipBpeTokenizer, HFTokenizer

    if name == "vlpt_clip_bpe":
      run = lambda: ClipBpeTokenizer()(texts)  # noqa: E731
    else:
      run = lambda: HFTokenizer(vocab_dir)(texts)  # noqa: E731
  start = time.perf_counter()
  run()
  print(f"seconds={time.perf_counter() - start:.6f}")


def cold_run(name: str, n: int, vocab_dir: str) -> float:
  out = subprocess.run(
    [
      sys.executable,
      os.path.abspath(__file__),
      "--worker",
      name,
      "--n",
      str(n),
      "--vocab-dir",
      vocab_dir,
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  return float(out.stdout.strip().splitlines()[-1].partition("=")[2])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=20000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--worker", choices=NAMES, help=argparse.SUPPRESS)
  p.add_argument("--vocab-dir", help=argparse.SUPPRESS)
  args = p.parse_args()
  sys.path.insert(0, REPO)
  if args.worker:
    worker(args.worker, args.n, args.vocab_dir)
    return
  from vlpt.data.tokenizers import write_hf_clip_vocab

  vocab_dir = tempfile.mkdtemp()
  write_hf_clip_vocab(vocab_dir)  # the HF tokenizer's files, written once outside the timing
  times = {k: [] for k in NAMES}
  for _ in range(args.repeats):
    for name in NAMES:
      times[name].append(cold_run(name, args.n, vocab_dir))
  rate = {k: args.n / statistics.median(v) for k, v in times.items()}
  for k, v in rate.items():
    print(
      f"{k:15s} {v:10.0f} captions/s (cold tokenizer in a fresh process, {args.n} captions, "
      f"median of {args.repeats})"
    )
  print(
    f"vlpt_captions_per_s={rate['vlpt_clip_bpe']:.0f} hf_captions_per_s={rate['vlpt_hf']:.0f} "
    f"open_clip_captions_per_s={rate['open_clip']:.0f} "
    f"ratio={rate['vlpt_clip_bpe'] / rate['open_clip']:.2f}"
  )


if __name__ == "__main__":
  main()
