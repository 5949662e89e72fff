#!/usr/bin/env python3
"""Wall time of loss + gradient, naive (all-gather) vs tiled ring, side by side in one run.

  python benchmarks/loss_speed.py --batch 32768 --loss softmax

Random L2-normalized fp32 embeddings of ``--dim`` sharded over ``--devices`` simulated CPU
devices. Runs alternate (naive, tiled, naive, ...) for ``--repeats`` rounds; medians are
reported. The last line is ``naive_s=<float> tiled_s=<float> ratio=<float>`` (tiled / naive).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32768)
  p.add_argument("--loss", choices=("softmax", "sigmoid"), default="softmax")
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--tile", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vlpt.distributed import set_host_device_count

  set_host_device_count(args.devices)
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from vlpt import sharding as S
  from vlpt.losses.contrastive import sigmoid_contrastive_sharded, softmax_contrastive_sharded
  from vlpt.losses.ring import sigmoid_ring_sharded, softmax_ring_sharded

  mesh = S.make_mesh({"data": -1})
  spec = P(S.BATCH_AXES)
  impls = {
    "naive": {"softmax": softmax_contrastive_sharded, "sigmoid": sigmoid_contrastive_sharded}[args.loss],
    "tiled": functools.partial(
      {"softmax": softmax_ring_sharded, "sigmoid": sigmoid_ring_sharded}[args.loss], tile_size=args.tile
    ),
  }
  rng = np.random.default_rng(0)

  def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  img = unit(rng.standard_normal((args.batch, args.dim), dtype=np.float32))
  txt = unit(img + rng.standard_normal((args.batch, args.dim), dtype=np.float32))
  sharding = NamedSharding(mesh, spec)
  img, txt = jax.device_put(img, sharding), jax.device_put(txt, sharding)
  scale, bias = jnp.float32(10.0), jnp.float32(-10.0)
  compiled, times, values = {}, {}, {}
  for name, fn in impls.items():
    loss_fn = jax.shard_map(
      lambda i, t, s, b, fn=fn: fn(i, t, s, b, S.BATCH_AXES)[0],
      mesh=mesh,
      in_specs=(spec, spec, P(), P()),
      out_specs=P(),
    )
    compiled[name] = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)))
    values[name] = float(jax.block_until_ready(compiled[name](img, txt, scale, bias))[0])
    times[name] = []
  for _ in range(args.repeats):
    for name in impls:
      start = time.perf_counter()
      jax.block_until_ready(compiled[name](img, txt, scale, bias))
      times[name].append(time.perf_counter() - start)
  naive, tiled = statistics.median(times["naive"]), statistics.median(times["tiled"])
  print(
    f"{args.loss} loss+grad, batch {args.batch}, dim {args.dim}, {jax.device_count()} "
    f"devices, tile {args.tile}: naive {naive:.3f}s (loss {values['naive']:.6f}), "
    f"tiled {tiled:.3f}s (loss {values['tiled']:.6f})"
  )
  print(f"naive_s={naive:.4f} tiled_s={tiled:.4f} ratio={tiled / naive:.3f}")


if __name__ == "__main__":
  main()
