#!/usr/bin/env python3
"""What vlpt's training loop costs on top of its jitted step.

  python benchmarks/loop_overhead.py --config configs/demo.py:tiny --devices 8

The loop is the real one (``vlpt.train.loop.train``: metrics tally, watches, log lines, progress,
checkpoint and evaluation cadences) with its input replaced by one batch already on the devices
(``train(..., loader_factory=...)``). The bare step is the same config's jitted step called in
a plain Python loop on the same batch. They are interleaved: the resident loader, when the loop
asks for the first batch of a log interval (the device is idle then: the log step read it), first
runs a block of bare steps on its own copy of the state. Each log interval of the loop is timed
from that batch to the next interval's first batch, so it includes the interval's log step;
intervals that hold a checkpoint or an evaluation are left out (those are work, not overhead).
Medians over intervals and blocks. A second run feeds the loop from the real input pipeline
(``make_loader``), timed the same way. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/demo.py:tiny", help="config file[:variant]")
  p.add_argument(
    "--devices", type=int, default=8, help="simulated CPU devices (unless XLA_FLAGS sets them)"
  )
  # configs/demo.py's cadences (its :tiny variant logs every step and evaluates every 20, for tests)
  p.add_argument("--log_every", type=int, default=50, help="config.log_every_steps")
  p.add_argument("--checkpoint_every", type=int, default=500, help="config.checkpoint_every_steps")
  p.add_argument("--eval_every", type=int, default=500, help="config.eval_every_steps")
  p.add_argument("--intervals", type=int, default=8, help="timed log intervals per run")
  return p.parse_args()


class BareStep:
  """The config's jitted step on its own state, in a plain loop (benchmarks/train_step.py's)."""

  def __init__(self, config, batch):
    import jax

    from vlpt import sharding as S
    from vlpt.train.objectives import objective_class
    from vlpt.train.setup import build, initial_state
    from vlpt.train.step import make_train_step

    self.jax, self.batch = jax, batch
    setup = build(config)
    self.state = initial_state(setup)
    self.step_fn = make_train_step(setup, objective_class(config)(setup))
    self.activate = lambda: S.activate(setup.mesh, setup.rules)
    self.run(2)  # compile

  def run(self, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    start = time.perf_counter()
    with self.activate():
      for _ in range(steps):
        self.state, metrics = self.step_fn(self.state, self.batch)
      self.jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / steps


class Timer:
  """Wraps a loader: times each log interval of the loop from the batch requests (the request
  for step s comes after everything the loop did for step s - 1); runs ``between`` (a bare
  block) before an interval starts."""

  def __init__(self, loader, *, log_every: int, first_step: int, skip: set[int], between=None):
    self.loader, self.log_every, self.skip, self.between = loader, log_every, skip, between
    self.step, self.start, self.per_step, self.bare = first_step, None, [], []

  def __next__(self):
    self.step += 1  # the step this batch is for
    now = time.perf_counter()
    if (self.step - 1) % self.log_every == 0:  # an interval starts (the last one ended)
      if self.start is not None and not (self.skip & set(range(self.step - self.log_every, self.step))):
        self.per_step.append((now - self.start) / self.log_every)
      warm = self.step > self.log_every  # (the first interval compiles)
      if self.between is not None and warm:
        self.bare.append(self.between(self.log_every))
      self.start = time.perf_counter() if warm else None
    return next(self.loader)

  def __getattr__(self, name):  # skipped, get_state, set_state, close: the wrapped loader's
    return getattr(self.loader, name)


class ResidentLoader:
  """One global batch, already on the devices, for every step; checkpointable (no position)."""

  def __init__(self, batch):
    self.batch, self.skipped = batch, {}

  def __next__(self):
    return self.batch

  def get_state(self) -> bytes:
    return b"{}"

  def set_state(self, state: bytes) -> None:
    pass

  def close(self) -> None:
    pass


def run_loop(config, loader_factory) -> Timer:
  from vlpt.train.loop import train

  timers = []

  def timed_factory(setup, start_batch):
    timer = loader_factory(setup, start_batch)
    timers.append(timer)
    return timer

  with tempfile.TemporaryDirectory() as workdir:
    train(config, workdir, loader_factory=timed_factory)
  return timers[0]


def main() -> None:
  args = parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vlpt.distributed import set_host_device_count

  set_host_device_count(args.devices)
  from absl import flags as absl_flags

  absl_flags.FLAGS.mark_as_parsed()
  import jax

  from vlpt.config import load_config
  from vlpt.train.loop import make_loader
  from vlpt.train.setup import build

  config = load_config(args.config)
  config.log_every_steps = args.log_every
  config.checkpoint_every_steps = args.checkpoint_every
  config.eval_every_steps = args.eval_every
  # warm-up interval, timed intervals, and a last one (its checkpoint and evaluation as configured)
  config.total_steps = args.log_every * (args.intervals + 2)
  every = lambda n: {s for s in range(1, config.total_steps + 1) if s % n == 0}  # noqa: E731
  busy = every(config.checkpoint_every_steps) | every(config.eval_every_steps) | {config.total_steps}

  first = make_loader(build(config))
  batch = next(first)
  first.close()
  bare = BareStep(config, batch)

  resident = run_loop(
    config,
    lambda setup, start: Timer(
      ResidentLoader(batch), log_every=args.log_every, first_step=start, skip=busy, between=bare.run
    ),
  )
  piped = run_loop(
    config,
    lambda setup, start: Timer(
      make_loader(setup, start), log_every=args.log_every, first_step=start, skip=busy
    ),
  )
  bare_s = statistics.median(resident.bare)
  loop_s = statistics.median(resident.per_step)
  piped_s = statistics.median(piped.per_step) if piped.per_step else float("nan")
  b = config.batch_size
  print(
    f"config {args.config}, global batch {b}, {jax.device_count()} JAX device(s), log every "
    f"{args.log_every}, checkpoint every {config.checkpoint_every_steps}, eval every "
    f"{config.eval_every_steps}; {len(resident.per_step)} timed intervals ({len(resident.bare)} bare "
    "blocks interleaved), intervals with a checkpoint or an evaluation left out"
  )
  print(f"{'run':<28} {'s/step (median)':>16} {'examples/s':>11} {'vs bare':>8}")
  for name, s in (
    ("bare jitted step", bare_s),
    ("loop, resident batch", loop_s),
    ("loop, input pipeline", piped_s),
  ):
    print(f"{name:<28} {s:>16.5f} {b / s:>11.1f} {s / bare_s:>8.3f}")
  print(f"overhead_ratio={loop_s / bare_s:.4f}")


if __name__ == "__main__":
  main()
