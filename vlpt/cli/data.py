"""``vlpt-data``: write and check WebDataset shards.

  vlpt-data build --from synthetic --split train --num N --out DIR [--shard-size K]
                  [--image-size S] [--format jpg|png] [--seed 0]
  vlpt-data build --from folder DIR --out OUT      # images + same-name .txt captions
  vlpt-data build --from csv FILE.csv|tsv|parquet --out OUT   # columns path, caption
  vlpt-data inspect PATTERN                         # counts, one per line

``build`` prints the shard pattern to use as ``config.data.train.source=wds:PATTERN``.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="vlpt-data", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="write WebDataset shards")
  b.add_argument("--from", dest="kind", nargs="+", required=True, metavar="KIND [PATH]",
                 help="synthetic | folder DIR | csv FILE (.csv, .tsv or .parquet)")
  b.add_argument("--out", required=True, help="output directory for NNNNN.tar shards")
  b.add_argument("--split", default="train", help="synthetic split (train, eval, test)")
  b.add_argument("--num", type=int, default=1000, help="synthetic: number of examples")
  b.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed")
  b.add_argument("--image-size", type=int, default=64, help="synthetic: image size")
  b.add_argument("--format", default="jpg", choices=("jpg", "png", "webp"),
                 help="synthetic: image encoding (png is lossless)")
  b.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
  b.add_argument("--shard-size", type=int, default=10000, help="samples per shard")
  b.add_argument("--path-column", default="path")
  b.add_argument("--caption-column", default="caption")
  i = sub.add_parser("inspect", help="count samples and problems in shards")
  i.add_argument("pattern", help="shards: dir/{00000..00009}.tar, a glob, or a .txt list")
  return p


def build(args: argparse.Namespace) -> str:
  from vlpt.data import shards
  kind, *rest = args.kind
  with shards.ShardWriter(args.out, args.shard_size) as writer:
    if kind == "synthetic":
      if rest:
        raise SystemExit("--from synthetic takes no path")
      if args.num < 1:
        raise SystemExit(f"--num must be positive, got {args.num}")
      for image, caption, meta in shards.synthetic_samples(args.split, args.num, args.image_size,
                                                           args.seed):
        writer.write(shards.encode_image(image, args.format, args.quality), args.format, caption,
                     meta)
    elif kind in ("folder", "csv"):
      if len(rest) != 1:
        raise SystemExit(f"--from {kind} needs one path")
      samples = (shards.folder_samples(rest[0]) if kind == "folder" else
                 shards.table_samples(rest[0], args.path_column, args.caption_column))
      shards.write_files(samples, writer)
    else:
      raise SystemExit(f"unknown --from {kind!r}; use synthetic, folder or csv")
  pattern = shards.shard_pattern(args.out, len(writer.paths))
  print(f"wrote {writer.count} samples in {len(writer.paths)} shard(s): {pattern}")
  print(f"train with --config.data.train.source=wds:{pattern}")
  return pattern


def inspect(args: argparse.Namespace) -> dict[str, int]:
  from vlpt.data.webdataset import inspect as scan
  counts = scan(args.pattern)
  for key in ("samples", "undecodable_images", "empty_captions", "truncated_shards"):
    print(f"{key} {counts[key]}")
  return counts


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "build":
      build(args)
    else:
      inspect(args)
  except FileNotFoundError as e:
    print(f"vlpt-data: {e}", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == "__main__":
  run()
