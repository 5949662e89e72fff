#!/usr/bin/env python3
"""Data at LAION scale: start-up time and memory of the shard indexes (issue 18).

  python benchmarks/data_scale.py [--shards 41456] [--samples 9650] [--batch 32768]
                                  [--processes 1,16,64] [--small 20,2000] [--record-files 41456]
                                  [--dir DIR] [--keep]

Part 1, a synthetic LAION-400M index: ``--shards`` shards of about ``--samples`` samples each
(counts drawn in +-50, realistic member offsets; no shard files, no image bytes), written with
:func:`vlpt.data.wds_index.write_index_file`. For each process count P, processes 0, P/2 and P-1
each run in a fresh Python process (``process_index`` / ``process_count`` given in-process, one at
a time), with the index file dropped from the page cache first (``posix_fadvise(DONTNEED)``):
the time from the process's start (interpreter and imports included) to its rows of the first
global batch planned (``--batch`` stream positions through the training pipeline's shuffle,
repeat and per-process share, resolved to shard and byte offset), and the resident memory the
index adds (RSS after minus RSS before opening it, imports done).

Part 2, small shards: ``--small`` shard counts of 50 tiny JPEG samples each, indexed with
``vlpt-data index``; a fresh process builds the training stream (``train_dataset``, global
shuffle, 224 px crops, CLIP BPE, batch 256, no workers) and draws its first batch: time from the
process's start and RSS then, 3 interleaved repeats, medians.

Part 3, ArrayRecord and Parquet starts: ``--record-files`` real files (one tiny record each: the
footers, not the records, are what a start pays for) of each format; a fresh process builds the
source over them with and without the set's record-count index (``vlpt-data build`` writes it; the
unindexed run reads every file's footer), 3 interleaved repeats, medians of the time from the
process's start to the source built and the rows of its first ``--batch`` located, and of the RSS
the source adds.

The last line is machine-readable: ``startup_s=... index_rss_mib=...`` for the largest process
count (the worst of its sampled processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def drop_cache(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def make_index(path: str, shards: int, samples: int) -> int:
  """A synthetic index of ``shards`` x ~``samples`` img2dataset-like samples; returns the total."""
  import numpy as np

  from vlpt.data.wds_index import BLOCK, RECORD, write_index_file

  rng = np.random.default_rng(0)
  counts = rng.integers(samples - 50, samples + 51, shards)
  most = int(counts.max())
  # one sample: header + jpg (~40 KB), header + txt, header + json, each padded to 512 bytes
  sizes = rng.integers(5_000, 80_000, most)
  txt = rng.integers(20, 200, most)
  js = rng.integers(300, 900, most)
  blocks = lambda n: (n + BLOCK - 1) // BLOCK  # noqa: E731
  span = 3 + blocks(sizes) + blocks(txt) + blocks(js)
  start = np.concatenate([[0], np.cumsum(span)[:-1]])
  table = np.zeros(most, RECORD)
  table["image"] = start + 1
  table["image_size"] = sizes
  table["txt"] = start + 2 + blocks(sizes)
  table["txt_size"] = txt
  table["json"] = start + 3 + blocks(sizes) + blocks(txt)
  table["json_size"] = js
  names = [f"/data/laion400m/{i:05d}.tar" for i in range(shards)]
  write_index_file(path, names, counts, (table[:c] for c in counts))
  return int(counts.sum())


class Locator:
  """A source whose example is where it lies (shard, byte offset): planning without reading."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    shard, row = self.source.tables.locate(int(index))
    return shard, int(self.source.tables.record(shard, row)["image"]) * 512


def plan_worker(index: str, process_count: int, process_index: int, batch: int) -> dict:
  import grain

  from vlpt.data.pipeline import GlobalBatchShare
  from vlpt.data.webdataset import WebDatasetSource

  before = rss_mib()
  t0 = time.perf_counter()
  source = WebDatasetSource(index, image_size=224, train=True)
  t_open = time.perf_counter() - t0
  ds = grain.MapDataset.source(Locator(source)).shuffle(seed=0).repeat(None)
  ds = GlobalBatchShare(ds, global_batch=batch, process_index=process_index, process_count=process_count)
  rows = [ds[k] for k in range(batch // process_count)]
  t_plan = time.perf_counter() - t0
  assert len({pos for pos, _ in rows}) == len(rows)
  return {
    "samples": len(source),
    "open_s": t_open,
    "plan_s": t_plan,
    "rss_added_mib": rss_mib() - before,
    "first": rows[0][1],
  }


def stream_worker(spec: str) -> dict:
  import ml_collections  # noqa: F401

  from vlpt.config import default_config
  from vlpt.data.pipeline import train_dataset
  from vlpt.data.tokenizers import build_tokenizer

  c = default_config()
  c.data.train.source = spec
  c.data.train.shuffle = True
  before = rss_mib()
  tok = build_tokenizer({"name": "clip_bpe", "context_length": 77})
  it = iter(
    train_dataset(c.data, tokenizer=tok, global_batch=256, seed=0, process_index=0, process_count=1)
  )
  batch = next(it)
  assert batch["image"].shape == (256, 224, 224, 3)
  return {"rss_mib": rss_mib(), "rss_added_mib": rss_mib() - before}


def run_child(*args: str) -> tuple[float, dict]:
  """Runs this script as a fresh process; (seconds from its start to its answer, its answer)."""
  t0 = time.perf_counter()
  out = subprocess.run(
    [sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=REPO
  ).stdout
  seconds = time.perf_counter() - t0
  return seconds, json.loads(out.strip().splitlines()[-1])


def write_small(out: str, shards: int, per_shard: int = 50) -> str:
  import numpy as np

  from vlpt.data.shards import ShardWriter, encode_image

  image = encode_image(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8), "jpg")
  with ShardWriter(out, per_shard) as w:
    for k in range(shards * per_shard):
      w.write(image, "jpg", f"a photo of a cat number {k}")
  return f"{out}/{{00000..{shards - 1:05d}}}.tar"


def record_worker(spec: str, batch: int, use_index: bool) -> dict:
  from vlpt.data import record_index
  from vlpt.data.sources import build_source, record_source_class

  record_source_class(spec.partition(":")[0])  # its format's library imported before measuring
  if not use_index:  # as if `vlpt-data index` had never run: every file's footer is read
    record_index.find_index = lambda paths: None

  before = rss_mib()
  t0 = time.perf_counter()
  source = build_source(spec, split="train", image_size=224, seed=0, options={"train": True})
  rows = [source.locate(k % len(source)) for k in range(batch)]
  return {
    "files": len(source.paths),
    "rows": len(rows),
    "open_s": time.perf_counter() - t0,
    "rss_added_mib": rss_mib() - before,
  }


def write_record_files(out: str, kind: str, files: int) -> str:
  """``files`` files of one 16 px JPEG record each, with the set's record-count index."""
  import numpy as np

  from vlpt.data.shards import encode_image, make_writer

  image = encode_image(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8), "jpg")
  writer = make_writer(kind, out, 1)
  with writer:
    for k in range(files):
      writer.write(image, "jpg", f"a photo of a cat number {k}")
  return f"{kind}:{writer.close()}"


def record_starts(root: str, files: int, batch: int) -> None:
  from vlpt.data import record_index
  from vlpt.data.files import expand_shards

  for kind in ("arrayrecord", "parquet"):
    out = os.path.join(root, f"records-{kind}-{files}")
    spec_file = os.path.join(out, "spec")
    if not os.path.exists(spec_file):
      t0 = time.perf_counter()
      spec = write_record_files(out, kind, files)
      with open(spec_file, "w") as f:
        f.write(spec)
      print(f"{files:,} {kind} files written in {time.perf_counter() - t0:.0f} s")
    spec = open(spec_file).read()
    index = record_index.find_index(expand_shards(spec.partition(":")[2]))
    runs = {"index": [], "footers": []}
    for _ in range(3):
      for label in runs:
        seconds, info = run_child("--_records", spec, str(batch), str(int(label == "index")))
        runs[label].append((seconds, info["rss_added_mib"], info["files"]))
    for label in runs:
      t = statistics.median(r[0] for r in runs[label])
      m = statistics.median(r[1] for r in runs[label])
      print(
        f"{kind}, {runs[label][0][2]:,} files, {'with the index' if label == 'index' else 'no index'}"
        f": {t:.2f} s from start to the first {batch} rows located, source adds {m:.1f} MiB RSS"
        f" (median of 3)"
      )
    assert index, "the writer wrote no index"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shards", type=int, default=41456)
  p.add_argument("--samples", type=int, default=9650)
  p.add_argument("--batch", type=int, default=32768)
  p.add_argument("--processes", default="1,16,64")
  p.add_argument("--small", default="20,2000", help="shard counts of part 2 ('' skips it)")
  p.add_argument("--dir", default=None, help="where the files go (default: a temporary folder)")
  p.add_argument("--keep", action="store_true", help="keep the files (a rerun reuses the index)")
  p.add_argument("--_plan", nargs=4, help=argparse.SUPPRESS)
  p.add_argument("--record-files", type=int, default=41456, help="part 3 (0 skips it)")
  p.add_argument("--_stream", help=argparse.SUPPRESS)
  p.add_argument("--_records", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._records:
    spec, batch, use_index = args._records
    print(json.dumps(record_worker(spec, int(batch), use_index == "1")))
    return
  if args._plan:
    index, count, pid, batch = args._plan
    print(json.dumps(plan_worker(index, int(count), int(pid), int(batch))))
    return
  if args._stream:
    print(json.dumps(stream_worker(args._stream)))
    return

  root = args.dir or tempfile.mkdtemp(prefix="vlpt-data-scale-")
  os.makedirs(root, exist_ok=True)
  try:
    if args.record_files:
      record_starts(root, args.record_files, args.batch)
    if args.small:
      counts = [int(x) for x in args.small.split(",")]
      specs = {}
      for n in counts:
        out = os.path.join(root, f"small-{n}")
        if not os.path.isdir(out):
          t0 = time.perf_counter()
          pattern = write_small(out, n)
          write_s = time.perf_counter() - t0
        else:
          pattern, write_s = f"{out}/{{00000..{n - 1:05d}}}.tar", 0.0
        t0 = time.perf_counter()
        subprocess.run(
          [sys.executable, "-m", "vlpt.cli.data", "index", pattern],
          check=True,
          capture_output=True,
          cwd=REPO,
        )
        index_s = time.perf_counter() - t0
        print(f"{n} shards x 50: written in {write_s:.1f} s, `vlpt-data index` {index_s:.1f} s")
        specs[n] = f"wds:{pattern}"
      results = {n: [] for n in counts}
      for _ in range(3):  # interleaved repeats
        for n in counts:
          seconds, info = run_child("--_stream", specs[n])
          results[n].append((seconds, info["rss_mib"]))
      for n in counts:
        s = statistics.median(r[0] for r in results[n])
        m = statistics.median(r[1] for r in results[n])
        print(f"{n} shards: first batch {s:.2f} s after start, RSS {m:.0f} MiB (median of 3)")
      lo, hi = min(counts), max(counts)
      ds = statistics.median(r[0] for r in results[hi]) - statistics.median(r[0] for r in results[lo])
      dm = statistics.median(r[1] for r in results[hi]) - statistics.median(r[1] for r in results[lo])
      print(f"{hi} vs {lo} shards: starts {ds:+.2f} s later, {dm:+.0f} MiB more RSS")

    index = os.path.join(root, "laion400m-synthetic.wdsindex")
    if not os.path.exists(index):
      t0 = time.perf_counter()
      total = make_index(index, args.shards, args.samples)
      gib = os.path.getsize(index) / 2**30
      print(f"index of {total:,} samples in {args.shards:,} shards: {gib:.2f} GiB, ", end="")
      print(f"written in {time.perf_counter() - t0:.0f} s")
    worst = (0.0, 0.0)
    for count in [int(x) for x in args.processes.split(",")]:
      times, rss = [], []
      for pid in sorted({0, count // 2, count - 1}):
        drop_cache(index)
        seconds, info = run_child("--_plan", index, str(count), str(pid), str(args.batch))
        times.append(seconds)
        rss.append(info["rss_added_mib"])
        print(
          f"P={count} p={pid}: {seconds:.2f} s from start to its {args.batch // count} rows of the "
          f"first batch planned (index opened in {info['open_s']:.2f} s, "
          f"planned in {info['plan_s']:.2f} s), "
          f"index adds {info['rss_added_mib']:.1f} MiB RSS; {info['samples']:,} samples"
        )
      worst = (max(times), max(rss))
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  print(f"startup_s={worst[0]:.3f} index_rss_mib={worst[1]:.3f}")


if __name__ == "__main__":
  main()
