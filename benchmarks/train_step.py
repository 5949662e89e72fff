#!/usr/bin/env python3
"""Train-step throughput of a vlpt config, optionally side by side with open_clip (CPU torch).

  python benchmarks/train_step.py --config configs/demo.py --devices 8 --open_clip

Both frameworks train the same model (tower widths, depths, heads, patch, vocabulary, context
length, embedding size) with the same batch, AdamW hyper-parameters, global-norm clipping and
fp32. The input pipeline is excluded: each side reuses one batch already in memory. Timed steps
are interleaved in blocks (vlpt, open_clip, vlpt, ...) so machine noise hits both alike, and
the median block is reported. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/demo.py", help="config file[:variant]")
  p.add_argument(
    "--devices",
    type=int,
    default=None,
    help="simulated CPU devices (ignored if XLA_FLAGS already sets a count)",
  )
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--blocks", type=int, default=5, help="timed blocks per framework")
  p.add_argument("--steps", type=int, default=5, help="steps per block")
  p.add_argument("--open_clip", action="store_true", help="also time open_clip on CPU torch")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  return p.parse_args()


class VlptRunner:
  def __init__(self, config):
    import jax

    from vlpt import sharding as S
    from vlpt.train.loop import make_loader
    from vlpt.train.objectives import objective_class
    from vlpt.train.setup import build, initial_state
    from vlpt.train.step import make_train_step

    self.jax = jax
    self.setup = build(config)
    self.state = initial_state(self.setup)
    self.step_fn = make_train_step(self.setup, objective_class(config)(self.setup))
    loader = make_loader(self.setup)
    self.batch = next(loader)
    loader.close()
    self.activate = lambda: S.activate(self.setup.mesh, self.setup.rules)
    start = time.perf_counter()
    self.run(1)
    self.compile_s = time.perf_counter() - start
    self.params = sum(x.size for x in jax.tree.leaves(self.state.params))

  def run(self, steps: int) -> None:
    with self.activate():
      for _ in range(steps):
        self.state, metrics = self.step_fn(self.state, self.batch)
      self.jax.block_until_ready((self.state, metrics))


class OpenClipRunner:
  """The same model, loss and optimizer in open_clip (PyTorch, CPU)."""

  def __init__(self, config, model_config: dict, threads: int):
    from vlpt.reference import import_torch_reference

    torch, open_clip = import_torch_reference()
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from vlpt.models.sizes import parse_text, parse_vit

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vit, patch = parse_vit(model_config["image"]["variant"])
    txt = parse_text(model_config["text"]["variant"])
    image_size = model_config["image"]["image_size"]
    vision = CLIPVisionCfg(
      layers=vit.depth,
      width=vit.width,
      head_width=vit.width // vit.heads,
      mlp_ratio=vit.mlp_dim / vit.width,
      patch_size=patch,
      image_size=image_size,
    )
    text = CLIPTextCfg(
      context_length=model_config["text"]["context_length"],
      vocab_size=model_config["text"]["vocab_size"],
      width=txt.width,
      heads=txt.heads,
      layers=txt.depth,
      mlp_ratio=txt.mlp_dim / txt.width,
    )
    self.torch = torch
    self.model = open_clip.model.CLIP(model_config["embed_dim"], vision, text)
    oc = config.optimizer
    self.opt = torch.optim.AdamW(
      self.model.parameters(), lr=oc.lr, betas=(oc.b1, oc.b2), eps=oc.eps, weight_decay=oc.weight_decay
    )
    self.clip = float(oc.grad_clip_norm or 0)
    self.loss = ClipLoss()
    b = config.batch_size
    self.images = torch.randn(b, 3, image_size, image_size)
    self.text = torch.randint(
      1, model_config["text"]["vocab_size"] - 1, (b, model_config["text"]["context_length"])
    )
    self.params = sum(p.numel() for p in self.model.parameters())
    start = time.perf_counter()
    self.run(1)
    self.compile_s = time.perf_counter() - start

  def run(self, steps: int) -> None:
    for _ in range(steps):
      image, text, scale = self.model(self.images, self.text)
      loss = self.loss(image, text, scale)
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      if self.clip:
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
      self.opt.step()
      with self.torch.no_grad():
        self.model.logit_scale.clamp_(0, 4.6052)


def timed_block(runner, steps: int) -> float:
  start = time.perf_counter()
  runner.run(steps)
  return (time.perf_counter() - start) / steps


def main() -> None:
  args = parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vlpt.distributed import set_host_device_count

  set_host_device_count(args.devices)
  from absl import flags as absl_flags

  absl_flags.FLAGS.mark_as_parsed()
  import jax

  from vlpt.config import load_config

  config = load_config(args.config)
  if args.batch:
    config.batch_size = args.batch
  vlpt = VlptRunner(config)
  runners = {"vlpt": vlpt}
  if args.open_clip:
    # the resolved model kwargs (vlpt.models.model_kwargs): the resolution, vocabulary and
    # context length filled in
    runners["open_clip"] = OpenClipRunner(config, vlpt.setup.model_config, args.threads)
  times: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(args.blocks):
    for name, runner in runners.items():
      times[name].append(timed_block(runner, args.steps))

  batch = config.batch_size
  print(
    f"config {args.config}, global batch {batch}, {jax.device_count()} JAX device(s), "
    f"torch threads {args.threads}, input pipeline excluded"
  )
  print(
    f"{'framework':<10} {'params':>10} {'first step s':>13} {'s/step (median)':>16} {'examples/s':>11}"
  )
  rates = {}
  for name, runner in runners.items():
    per_step = statistics.median(times[name])
    rates[name] = batch / per_step
    print(
      f"{name:<10} {runner.params:>10,} {runner.compile_s:>13.2f} {per_step:>16.4f} {rates[name]:>11.1f}"
    )
  if args.open_clip:
    print(
      f"vlpt_examples_per_s={rates['vlpt']:.1f} open_clip_examples_per_s="
      f"{rates['open_clip']:.1f} ratio={rates['vlpt'] / rates['open_clip']:.3f}"
    )
  else:
    print(f"vlpt_examples_per_s={rates['vlpt']:.1f}")


if __name__ == "__main__":
  main()
