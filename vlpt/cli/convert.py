"""``vlpt-convert SRC DST [--to vlpt|open_clip|hf]``: checkpoints between vlpt and the ecosystem.

SRC is detected: a vlpt export or training workdir, an open_clip directory
(``open_clip_config.json`` + ``open_clip_model.safetensors``), an HF ``CLIPModel`` /
``SiglipModel`` / ``Siglip2Model`` directory (``config.json`` + ``model.safetensors``) or a big_vision
``.npz``.
DST must not exist (or be empty); it appears only once fully written.
A training workdir (or a step of it) is exported with its EMA weights when its checkpoint has
them (``config.ema.decay``), or with ``--weights raw`` its parameters.
``--print-config`` prints the config keys that describe SRC's architecture (``model``, and
``data.image_size`` / ``tokenizer`` / ``normalization``) as JSON: ``vlpt.config.overlay(config,
json.load(f))`` in a config file, or ``--config.init.architecture_from_checkpoint=True``.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlpt.errors import WeightsError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="vlpt-convert", description=__doc__.splitlines()[0])
  parser.add_argument(
    "src", help="checkpoint to read (format detected; a training workdir or WORKDIR/checkpoints/STEP)"
  )
  parser.add_argument("dst", nargs="?", help="output directory (must not exist or be empty)")
  parser.add_argument(
    "--to", choices=("vlpt", "open_clip", "hf"), default="vlpt", help="output format (default: vlpt)"
  )
  parser.add_argument(
    "--image-size", type=int, default=None, help="resize image position embeddings to this resolution"
  )
  parser.add_argument(
    "--context-length", type=int, default=None, help="resize text position embeddings to this length"
  )
  parser.add_argument(
    "--print-config",
    action="store_true",
    help="print the config keys describing SRC's architecture (model, data) as JSON and exit",
  )
  parser.add_argument(
    "--step",
    type=int,
    default=None,
    help="a training workdir's checkpoint of this step (default: the latest)",
  )
  parser.add_argument(
    "--weights",
    choices=("ema", "raw"),
    default="ema",
    help="a training workdir's weights: its EMA weights when the checkpoint has them (default), "
    "or raw: its parameters",
  )
  args = parser.parse_args(argv)
  if not args.print_config and not args.dst:
    parser.error("DST is required (or use --print-config)")
  from vlpt.train.initialization import read_checkpoint, step_directory
  from vlpt.weights.formats import detect_format, write_bundle
  from vlpt.weights.resize import resize_model

  try:
    bundle = read_checkpoint(args.src, args.step, weights=args.weights)
    kind = "workdir" if step_directory(args.src) else detect_format(args.src)
    if kind == "workdir":
      kind += " (EMA weights)" if bundle.source == "workdir EMA" else " (parameters)"
    if args.image_size or args.context_length:
      bundle.model, bundle.params = resize_model(
        bundle.model, bundle.params, image_size=args.image_size, context_length=args.context_length
      )
      if args.image_size:
        import dataclasses

        bundle.preprocess = dataclasses.replace(bundle.preprocess, image_size=args.image_size)
      if args.context_length and bundle.tokenizer:
        bundle.tokenizer = dict(bundle.tokenizer, context_length=args.context_length)
    if args.print_config:
      from vlpt.train.initialization import architecture

      print(json.dumps(architecture(bundle), indent=2))
      return 0
    write_bundle(bundle, args.dst, args.to)
  except (WeightsError, ValueError, OSError) as e:
    print(f"vlpt-convert: error: {e}", file=sys.stderr)
    return 2
  n = sum(v.size for v in bundle.params.values())
  print(
    f"[vlpt-convert] {kind} -> {args.to}: {len(bundle.params)} tensors, {n / 1e6:.2f}M "
    f"parameters written to {args.dst}"
  )
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == "__main__":
  run()
