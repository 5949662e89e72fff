#!/usr/bin/env python3
"""Compile time of a full train step (forward, global loss, backward, AdamW) for a large model.

  python benchmarks/compile_time.py                 # scanned ViT-L/14 + L text tower, 8 devices
  python benchmarks/compile_time.py --compare       # scanned vs Python-loop towers, per remat

The step is lowered and compiled from abstract shapes only (nothing is initialized or run), on
8 simulated CPU devices with the data axis over all of them. Scanning traces one block per tower
whatever the depth, which is what keeps deep towers' compile time flat. ``--compare`` compiles
the looped towers with the *same* remat policy as the scanned ones, for each policy of
``--remats`` (default ``full,none``: rematerialization adds its own recomputation to the
program, so comparing scanned+remat with looped without remat would mix the two effects). The
last line is machine-readable: ``compile_s=<float>`` (the scanned ``--remat`` configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image", default="L/14", help="ViT variant (default L/14)")
  p.add_argument("--text", default="L", help="text tower size (default L: 768 wide, 12 deep)")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--batch", type=int, default=8, help="global batch")
  p.add_argument("--remat", default="full", help="remat policy of the towers")
  p.add_argument(
    "--compare",
    action="store_true",
    help="also compile unscanned towers, with the same remat, for each of --remats",
  )
  p.add_argument(
    "--remats", default="full,none", help="remat policies --compare reports (besides --remat)"
  )
  return p.parse_args()


def make_config(args, scan: bool, remat: str):
  from vlpt.config import default_config

  c = default_config()
  c.host_device_count = args.devices
  c.batch_size = c.eval.batch_size = args.batch
  c.total_steps = 10
  c.data.image_size = args.image_size
  c.data.tokenizer = {"name": "word", "context_length": 77}
  c.model.embed_dim = 768
  c.model.image.update(variant=args.image, scan=scan, remat=remat)
  if "image_size" in c.model.image:  # before vlpt 0.2 the tower kept its own copy
    c.model.image.image_size = args.image_size
  c.model.text.update(variant=args.text, vocab_size=49408, context_length=77, scan=scan, remat=remat)
  return c


def compile_seconds(config) -> tuple[float, float, int]:
  """(trace + lower + compile seconds, trace + lower seconds, parameter count)."""
  import jax

  from vlpt import sharding as S
  from vlpt.train.objectives import objective_class
  from vlpt.train.setup import build
  from vlpt.train.step import make_train_step

  setup = build(config)
  step = make_train_step(setup, objective_class(config)(setup))
  b = config.batch_size
  batch = {
    "image": jax.ShapeDtypeStruct(
      (b, config.data.image_size, config.data.image_size, 3), jax.numpy.uint8
    ),
    "text": jax.ShapeDtypeStruct((b, 77), jax.numpy.int32),
  }
  start = time.perf_counter()
  with S.activate(setup.mesh, setup.rules):
    lowered = step.lower(setup.abstract_state, batch)
    lowered_s = time.perf_counter() - start
    lowered.compile()
  n = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
  return time.perf_counter() - start, lowered_s, n


def main() -> None:
  args = parse_args()
  flag = f"--xla_force_host_platform_device_count={args.devices}"
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax

  print(
    f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, "
    f"ViT-{args.image} @ {args.image_size}px + text {args.text}, batch {args.batch}",
    flush=True,
  )
  scanned, scanned_lower, n = compile_seconds(make_config(args, scan=True, remat=args.remat))
  print(
    f"scanned, remat={args.remat}: {n / 1e6:.1f}M params, trace+lower {scanned_lower:.1f} s, "
    f"total {scanned:.1f} s",
    flush=True,
  )
  if args.compare:
    remats = [args.remat] + [r for r in args.remats.split(",") if r and r != args.remat]
    for remat in remats:
      if remat == args.remat:
        scan_s = scanned
      else:
        scan_s, scan_lower, _ = compile_seconds(make_config(args, scan=True, remat=remat))
        print(
          f"scanned, remat={remat}: trace+lower {scan_lower:.1f} s, total {scan_s:.1f} s", flush=True
        )
      loop, loop_lower, _ = compile_seconds(make_config(args, scan=False, remat=remat))
      print(
        f"looped, remat={remat}: trace+lower {loop_lower:.1f} s, total {loop:.1f} s; "
        f"looped/scanned = {loop / scan_s:.2f}x (same remat)",
        flush=True,
      )
  print(f"compile_s={scanned:.2f}")


if __name__ == "__main__":
  main()
