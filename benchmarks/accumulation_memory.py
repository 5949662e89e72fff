#!/usr/bin/env python3
"""Compiled temporary memory of one train step as the accumulation steps k grow.

  python benchmarks/accumulation_memory.py --config configs/demo.py --batch 2048 --ks 1,2,4,8

Compiles (never runs) the jitted train step for each k and prints XLA's
``temp_size_in_bytes`` per device: activation memory should fall roughly as B/k while the loss
still sees all B examples. The last line is ``temp_bytes_per_device_by_k=k1:bytes,k2:bytes,...``.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--batch", type=int, default=2048)
  p.add_argument("--ks", default="1,2,4,8")
  p.add_argument("--devices", type=int, default=8)
  args = p.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vlpt.distributed import set_host_device_count

  set_host_device_count(args.devices)
  import jax
  import jax.numpy as jnp

  from vlpt import sharding as S
  from vlpt.config import load_config
  from vlpt.train.objectives import objective_class
  from vlpt.train.setup import build
  from vlpt.train.step import make_train_step

  results = []
  for k in (int(x) for x in args.ks.split(",")):
    config = load_config(args.config)
    config.batch_size = args.batch
    config.accumulation_steps = k
    setup = build(config)
    size = config.data.image_size
    length = setup.tokenizer.context_length
    batch = {
      "image": jax.ShapeDtypeStruct(
        (args.batch, size, size, 3), jnp.uint8, sharding=S.batch_sharding(setup.mesh, 4)
      ),
      "text": jax.ShapeDtypeStruct(
        (args.batch, length), jnp.int32, sharding=S.batch_sharding(setup.mesh, 2)
      ),
    }
    step = make_train_step(setup, objective_class(config)(setup))
    with S.activate(setup.mesh, setup.rules):
      compiled = step.lower(setup.abstract_state, batch).compile()
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
    results.append((k, temp))
    print(
      f"{args.config} batch {args.batch} on {jax.device_count()} devices, k={k}: "
      f"{temp / 2**20:.1f} MiB temp per device",
      flush=True,
    )
  print("temp_bytes_per_device_by_k=" + ",".join(f"{k}:{t}" for k, t in results))


if __name__ == "__main__":
  main()
