#!/usr/bin/env python3
"""XLA's compiled temporary memory per device for a contrastive loss + its gradient.

  python benchmarks/loss_memory.py --batch 1048576 --impl tiled --loss softmax

Compiles (never runs) ``value_and_grad`` of the global loss over ``--devices`` simulated CPU
devices, with L2-normalized fp32 embeddings of ``--dim`` sharded over the batch, and reads
``memory_analysis().temp_size_in_bytes`` of the compiled program: the scratch memory beyond the
inputs and outputs. ``naive`` is vlpt's all-gather loss (each device: its rows against all B
columns, b x B logits); ``tiled`` is the tiled ring (``config.loss.impl='ring'``). ``--sweep``
prints the table for a range of batches. The last line is ``temp_bytes_per_device=<int>``.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16384, help="global batch")
  p.add_argument("--impl", choices=("naive", "tiled"), default="tiled")
  p.add_argument("--loss", choices=("softmax", "sigmoid"), default="softmax")
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--tile", type=int, default=2048, help="ring tile size (rows)")
  p.add_argument("--sweep", action="store_true", help="batches 16k..1M, both impls")
  return p.parse_args()


def temp_bytes(batch: int, impl: str, loss: str, dim: int, tile: int) -> int:
  import functools

  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from vlpt import sharding as S
  from vlpt.losses.contrastive import sigmoid_contrastive_sharded, softmax_contrastive_sharded
  from vlpt.losses.ring import sigmoid_ring_sharded, softmax_ring_sharded

  mesh = S.make_mesh({"data": -1})
  fns = {
    ("naive", "softmax"): softmax_contrastive_sharded,
    ("naive", "sigmoid"): sigmoid_contrastive_sharded,
    ("tiled", "softmax"): functools.partial(softmax_ring_sharded, tile_size=tile),
    ("tiled", "sigmoid"): functools.partial(sigmoid_ring_sharded, tile_size=tile),
  }
  fn = fns[(impl, loss)]
  spec = P(S.BATCH_AXES)
  loss_fn = jax.shard_map(
    lambda i, t, s, b: fn(i, t, s, b, S.BATCH_AXES)[0],
    mesh=mesh,
    in_specs=(spec, spec, P(), P()),
    out_specs=P(),
  )
  grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)))
  emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, spec))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  compiled = grad.lower(emb, emb, scalar, scalar).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def main() -> None:
  args = parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vlpt.distributed import set_host_device_count

  set_host_device_count(args.devices)
  import jax

  n = jax.device_count()
  if args.sweep:
    print(
      f"{'loss':<8} {'batch':>9} {'B/n':>7} {'naive MiB':>10} {'tiled MiB':>10}  "
      f"(dim {args.dim}, fp32, {n} devices, tile {args.tile})"
    )
    for batch in (16384, 65536, 262144, 1048576):
      for loss in ("softmax", "sigmoid"):
        naive = temp_bytes(batch, "naive", loss, args.dim, args.tile)
        tiled = temp_bytes(batch, "tiled", loss, args.dim, args.tile)
        print(
          f"{loss:<8} {batch:>9} {batch // n:>7} {naive / 2**20:>10.1f} {tiled / 2**20:>10.1f}",
          flush=True,
        )
  value = temp_bytes(args.batch, args.impl, args.loss, args.dim, args.tile)
  print(
    f"{args.loss} {args.impl} batch={args.batch} dim={args.dim} devices={n} "
    f"tile={args.tile}: {value / 2**20:.1f} MiB temp per device"
  )
  print(f"temp_bytes_per_device={value}")


if __name__ == "__main__":
  main()
