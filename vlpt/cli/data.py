"""``vlpt-data``: write and check training shards (WebDataset tar, ArrayRecord, Parquet).

  vlpt-data build --from synthetic --split train --num N --out DIR [--shard-size K]
                  [--image-size S] [--format wds|arrayrecord|parquet] [--image-format jpg|png|webp]
  vlpt-data build --from folder DIR --out OUT      # images + same-name .txt captions
  vlpt-data build --from csv FILE.csv|tsv|parquet --out OUT   # columns path (or image bytes), caption
  vlpt-data inspect PATTERN                         # counts, one per line
  vlpt-data index PATTERN [--out PATH]              # write the shards' index once (any format)

``--format`` picks the container (default ``wds``; ``jpg``/``png``/``webp`` there still mean WebDataset
shards with that image encoding). ``build`` prints the pattern to use as
``config.data.train.source=wds:PATTERN`` (or ``arrayrecord:`` / ``parquet:``). ``inspect`` reads
WebDataset tars, and ArrayRecord or Parquet files (by their ``.array_record`` / ``.parquet``
names or an ``arrayrecord:`` / ``parquet:`` prefix). ``index`` writes the index a start reads
instead of the shards: WebDataset's member offsets (:mod:`vlpt.data.wds_index`), ArrayRecord's
and Parquet's record counts (:mod:`vlpt.data.record_index`). Formats: docs/data.md.
"""

from __future__ import annotations

import argparse
import sys

IMAGE_FORMATS = ("jpg", "png", "webp")
CONTAINERS = ("wds", "arrayrecord", "parquet")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="vlpt-data", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="write WebDataset, ArrayRecord or Parquet shards")
  b.add_argument(
    "--from",
    dest="kind",
    nargs="+",
    required=True,
    metavar="KIND [PATH]",
    help="synthetic | folder DIR | csv FILE (.csv, .tsv or .parquet)",
  )
  b.add_argument("--out", required=True, help="output directory for the NNNNN.* shards")
  b.add_argument("--split", default="train", help="synthetic split (train, eval, test)")
  b.add_argument("--num", type=int, default=1000, help="synthetic: number of examples")
  b.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed")
  b.add_argument("--image-size", type=int, default=64, help="synthetic: image size")
  b.add_argument(
    "--format",
    default="wds",
    choices=CONTAINERS + IMAGE_FORMATS,
    help="shard format: wds (tar), arrayrecord or parquet; jpg/png/webp: wds shards "
    "with that image encoding (as --image-format)",
  )
  b.add_argument(
    "--image-format",
    default=None,
    choices=IMAGE_FORMATS,
    help="synthetic: image encoding (default jpg; png is lossless)",
  )
  b.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
  b.add_argument("--shard-size", type=int, default=10000, help="samples per shard")
  b.add_argument(
    "--row-group-size",
    type=int,
    default=None,
    help="parquet: rows per row group (default 16; small groups for random access)",
  )
  b.add_argument("--path-column", default="path")
  b.add_argument("--caption-column", default="caption")
  i = sub.add_parser("inspect", help="count samples and problems in shards")
  i.add_argument(
    "pattern",
    help="shards: dir/{00000..00009}.tar, a glob, or a .txt list; "
    "*.array_record / *.parquet files, or an arrayrecord: / parquet: "
    "prefixed pattern",
  )
  x = sub.add_parser("index", help="read shards once and write the index a training start reads")
  x.add_argument(
    "pattern",
    help="tar shards (wds: prefix optional), or arrayrecord: / parquet: files; local or gs://",
  )
  x.add_argument(
    "--out",
    default=None,
    help="index file (local or gs://; train with KIND:PATH); default: beside the shards, "
    "where training over the same pattern finds it",
  )
  x.add_argument("--threads", type=int, default=16, help="shards scanned at once")
  return p


def index(args: argparse.Namespace) -> str:
  import time

  from vlpt.data.files import expand_shards
  from vlpt.errors import DataError

  kind, pattern = _record_kind(args.pattern)
  paths = expand_shards(pattern)
  if not paths:
    raise FileNotFoundError(f"no shards match {pattern!r}")
  t0 = time.perf_counter()
  if kind is None:
    from vlpt.data.wds_index import write_index

    out, samples = write_index(paths, args.out, threads=args.threads)
    kind, unit = "wds", "shard(s)"
  else:
    from vlpt.data.record_index import write_index
    from vlpt.data.sources import record_source_class

    counted = record_source_class(kind).index_files(paths, threads=args.threads)
    if len(counted.unreadable) == len(paths):
      path, why = next(iter(counted.unreadable.items()))
      raise DataError(f"no {kind} file of {pattern!r} can be read, e.g. {path} ({why})")
    out, samples, unit = write_index(counted, args.out), sum(counted.counts), f"{kind} file(s)"
    for path, why in counted.unreadable.items():
      print(f"unreadable: {path} ({why})", file=sys.stderr)
  took = time.perf_counter() - t0
  print(f"indexed {samples} samples in {len(paths)} {unit} in {took:.1f} s: {out}")
  print(f"train with --config.data.train.source={kind}:{out if args.out else pattern}")
  return out


def _formats(args: argparse.Namespace) -> tuple[str, str]:
  """(container, image encoding) from --format / --image-format."""
  container, image_format = args.format, args.image_format
  if container in IMAGE_FORMATS:
    if image_format is not None and image_format != container:
      raise SystemExit(f"--format {container} and --image-format {image_format} disagree")
    container, image_format = "wds", container
  return container, image_format or "jpg"


def build(args: argparse.Namespace) -> str:
  from vlpt.data import shards
  from vlpt.data.shard_writer import shard_pattern

  kind, *rest = args.kind
  container, image_format = _formats(args)
  if args.row_group_size is not None and container != "parquet":
    raise SystemExit("--row-group-size applies to --format parquet only")
  writer = shards.make_writer(container, args.out, args.shard_size, row_group_size=args.row_group_size)
  with writer:
    if kind == "synthetic":
      if rest:
        raise SystemExit("--from synthetic takes no path")
      if args.num < 1:
        raise SystemExit(f"--num must be positive, got {args.num}")
      for image, caption, meta in shards.synthetic_samples(
        args.split, args.num, args.image_size, args.seed
      ):
        writer.write(shards.encode_image(image, image_format, args.quality), image_format, caption, meta)
    elif kind in ("folder", "csv"):
      if len(rest) != 1:
        raise SystemExit(f"--from {kind} needs one path")
      samples = (
        shards.folder_samples(rest[0])
        if kind == "folder"
        else shards.table_samples(rest[0], args.path_column, args.caption_column)
      )
      shards.write_files(samples, writer)
    else:
      raise SystemExit(f"unknown --from {kind!r}; use synthetic, folder or csv")
  pattern = shard_pattern(args.out, len(writer.paths), writer.suffix)
  print(f"wrote {writer.count} samples in {len(writer.paths)} shard(s): {pattern}")
  print(f"train with --config.data.train.source={writer.source_kind}:{pattern}")
  return pattern


def _record_kind(pattern: str) -> tuple[str | None, str]:
  """('arrayrecord' | 'parquet' | None for tar shards, the pattern without its prefix)."""
  kind, sep, rest = pattern.partition(":")
  if sep and kind in ("wds", "arrayrecord", "parquet"):
    return (None if kind == "wds" else kind), rest
  from vlpt.data.files import expand_shards

  paths = expand_shards(pattern)
  if paths and all(p.endswith((".array_record", ".arrayrecord")) for p in paths):
    return "arrayrecord", pattern
  if paths and all(p.endswith(".parquet") for p in paths):
    return "parquet", pattern
  return None, pattern


def inspect(args: argparse.Namespace) -> dict[str, int]:
  kind, pattern = _record_kind(args.pattern)
  if kind is None:
    from vlpt.data.webdataset import inspect as scan

    counts = scan(pattern)
  else:
    from vlpt.data.records import inspect_records
    from vlpt.data.sources import build_source

    source = build_source(
      f"{kind}:{pattern}",
      split="train",
      image_size=32,
      seed=0,
      options={"train": True, "max_bad_fraction": 1.0},
    )
    counts = inspect_records(source)
  for key in ("samples", "undecodable_images", "empty_captions", "truncated_shards"):
    print(f"{key} {counts[key]}")
  return counts


def main(argv: list[str] | None = None) -> int:
  from vlpt.errors import DataError

  args = _parser().parse_args(argv)
  try:
    if args.command == "build":
      build(args)
    elif args.command == "index":
      index(args)
    else:
      inspect(args)
  except (FileNotFoundError, DataError, ValueError) as e:  # missing files, unreadable, no columns
    print(f"vlpt-data: {e}", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == "__main__":
  run()
