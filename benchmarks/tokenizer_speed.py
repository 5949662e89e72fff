#!/usr/bin/env python3
"""CLIP BPE tokenization speed: vlpt's tokenizers vs open_clip's, on the same captions.

  python benchmarks/tokenizer_speed.py [--n 20000]

Captions are drawn from the built-in dataset's caption grammar plus random words and numbers
(so the per-word cache does not see only repeats). Each tokenizer starts cold; the runs are
interleaved and the median of 3 is reported. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=20000)
  args = p.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import numpy as np
  from vlpt.reference import import_torch_reference
  torch, open_clip = import_torch_reference()

  from vlpt.data.synthetic import SyntheticCaptions
  from vlpt.data.tokenizers import ClipBpeTokenizer, HFTokenizer, write_hf_clip_vocab

  data = SyntheticCaptions("train", image_size=16)
  rng = np.random.default_rng(0)
  letters = list("abcdefghijklmnopqrstuvwxyzéüß")
  captions = []
  for i in range(args.n):
    extra = " ".join("".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(3))
    captions.append(f"{data[i % 1000]['caption']} {extra} {rng.integers(0, 10**6)}")
  import tempfile
  vocab_dir = tempfile.mkdtemp()
  write_hf_clip_vocab(vocab_dir)
  runners = {
      "vlpt_clip_bpe": lambda: ClipBpeTokenizer()(captions),
      "vlpt_hf": lambda: HFTokenizer(vocab_dir)(captions),
      "open_clip": lambda: open_clip.tokenizer.SimpleTokenizer()(captions),
  }
  times = {k: [] for k in runners}
  for _ in range(3):
    for name, fn in runners.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  rate = {k: args.n / statistics.median(v) for k, v in times.items()}
  for k, v in rate.items():
    print(f"{k:15s} {v:10.0f} captions/s (cold tokenizer, {args.n} captions, 1 process)")
  print(f"vlpt_captions_per_s={rate['vlpt_clip_bpe']:.0f} hf_captions_per_s={rate['vlpt_hf']:.0f} "
        f"open_clip_captions_per_s={rate['open_clip']:.0f} "
        f"ratio={rate['vlpt_clip_bpe'] / rate['open_clip']:.2f}")


if __name__ == "__main__":
  main()
