#!/usr/bin/env python3
"""Input-pipeline throughput at 224 px: vlpt's grain + WebDataset source vs open_clip's pipeline.

  python benchmarks/input_pipeline.py [--same-work] [--cold] [--repeats 7] [--num 3000]
                                     [--workers 2] [--batch 128] [--batches 20] [--shards-dir DIR]

Shards: real photographs shipped with Python packages (scikit-image's astronaut, cat, coffee,
Hubble field, motorcycle, rocket, retina, IHC and camera images; scikit-learn's ``china.jpg`` and
``flower.jpg``; matplotlib's ``grace_hopper.jpg``; those whose package is installed: ``pip install
-e ".[reference,bench]"`` has them all), cut into varied crops and re-encoded as JPEG (quality
95) with the longer side between 256 and 640 px, written as WebDataset tars by
``vlpt.data.shards.ShardWriter``.

Both pipelines read the same shards with the same number of worker processes, decode, apply a
training RandomResizedCrop(224, scale=(0.9, 1.0), bicubic), tokenize with CLIP BPE (77 tokens)
and batch:

- vlpt: ``vlpt.data.pipeline.train_dataset`` (``wds:`` source, global shuffle, grain
  ``mp_prefetch`` workers); JPEGs are decoded with PIL ``draft``; images stay uint8.
- open_clip: the stages of ``open_clip_train.data.get_wds_dataset`` (SimpleShardList,
  split_by_worker, tarfile_to_samples, shuffle, decode('pilrgb'), open_clip's train transform,
  tokenizer, batched, ``wds.WebLoader``); its transform ends in ToTensor + Normalize (float32).

Two comparisons:

- default (``vlpt-defaults`` vs ``open_clip-defaults``): each side as it trains out of the box.
  vlpt decodes JPEGs with PIL ``draft`` (DCT-scaled), resizes with ``reducing_gap`` and stops at
  uint8 HWC (it normalizes on device), with ``read_threads=2`` per worker; open_clip decodes at
  full size, resizes with torchvision's PIL path and normalizes to float32 CHW on the host, one
  thread per torch worker.
- ``--same-work``: both produce the same tensor: full-size decoding, RandomResizedCrop(224,
  scale=(0.9, 1.0), ratio=(3/4, 4/3)) resized by PIL bicubic without ``reducing_gap``, float32
  CHW normalized with CLIP's mean and std on the host, one thread per worker.

Each side runs ``--repeats`` times, interleaved (the side that goes first alternates), each run a
fresh pipeline with fresh workers: one warm-up batch, then ``--batches`` timed batches; the
figures are medians. ``--cold`` drops the shards from the OS page cache
(``posix_fadvise(DONTNEED)``) before every run. The last line is machine-readable:
``ratio=<vlpt/open_clip>`` of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SKIMAGE_PHOTOS = (
  "astronaut.png",
  "chelsea.png",
  "coffee.png",
  "hubble_deep_field.jpg",
  "motorcycle_left.png",
  "rocket.jpg",
  "retina.jpg",
  "ihc.png",
  "camera.png",
)


def photos():
  """The color photographs scikit-image, scikit-learn and matplotlib ship (those installed)."""
  from PIL import Image

  paths = []
  try:
    import skimage

    paths += [os.path.join(os.path.dirname(skimage.__file__), "data", n) for n in SKIMAGE_PHOTOS]
  except ImportError:
    pass
  try:
    import sklearn.datasets

    paths += [
      os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", n)
      for n in ("china.jpg", "flower.jpg")
    ]
  except ImportError:
    pass
  try:
    import matplotlib

    paths.append(
      os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    )
  except ImportError:
    pass
  return [Image.open(p).convert("RGB") for p in paths if os.path.exists(p)]


def build_shards(out: str, num: int, shard_size: int) -> str:
  import io

  import numpy as np
  from PIL import Image

  from vlpt.data.shards import ShardWriter

  images = photos()
  if not images:
    raise SystemExit("no packaged photographs found: pip install -e '.[reference,bench]'")
  rng = np.random.default_rng(0)
  words = ["a", "photo", "of", "the", "old", "city", "flower", "portrait", "with", "red", "blue"]
  with ShardWriter(out, shard_size) as w:
    for k in range(num):
      im = images[k % len(images)]
      W, H = im.size
      cw, ch = int(W * rng.uniform(0.5, 1.0)), int(H * rng.uniform(0.5, 1.0))
      x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
      long_side = int(rng.integers(256, 641))
      scale = long_side / max(cw, ch)
      crop = im.resize(
        (max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC, box=(x, y, x + cw, y + ch)
      )
      buf = io.BytesIO()
      crop.save(buf, format="JPEG", quality=95)
      caption = " ".join(rng.choice(words, int(rng.integers(4, 12))))
      w.write(buf.getvalue(), "jpg", caption, {"caption": caption})
  return w.close()


class ToCHWFloat:
  """uint8 HWC -> float32 CHW normalized with CLIP's mean and std (open_clip's ToTensor +
  Normalize), on the host: what open_clip's workers do."""

  def __call__(self, example: dict) -> dict:
    from vlpt.data.normalization import OPENAI_MEAN, OPENAI_STD

    # the same arithmetic as ToTensor + Normalize ((x / 255 - mean) / std), in place: one
    # float32 copy of the image, not a temporary per operation
    x = np.ascontiguousarray(example["image"].transpose(2, 0, 1), dtype=np.float32)
    std = np.asarray(OPENAI_STD, np.float32)[:, None, None]
    x *= 1.0 / (255.0 * std)
    x -= (np.asarray(OPENAI_MEAN, np.float32) / np.asarray(OPENAI_STD, np.float32))[:, None, None]
    return {**example, "image": x}


def drop_cache(pattern: str) -> None:
  """Evicts the shards from the OS page cache, so the next run reads them from disk."""
  from vlpt.data.files import expand_shards

  for path in expand_shards(pattern):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fdatasync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def vlpt_same_work(pattern: str, workers: int, batch: int):
  """vlpt's pipeline (source, shuffle, share, TrainTransform, batch, workers) doing open_clip's
  work: full-size decode, resize without reducing_gap, float32 CHW normalized, one thread."""
  import grain

  from vlpt.data.pipeline import GlobalBatchShare, TrainTransform
  from vlpt.data.tokenizers import build_tokenizer
  from vlpt.data.transforms import RandomResizedCrop
  from vlpt.data.webdataset import WebDatasetSource

  crop = RandomResizedCrop(224, (0.9, 1.0), (3 / 4, 4 / 3), "bicubic", draft=False, reducing_gap=None)
  tok = build_tokenizer({"name": "clip_bpe", "context_length": 77})
  source = WebDatasetSource(pattern, image_size=224, train=True, crop=crop)
  ds = grain.MapDataset.source(source).shuffle(seed=0).repeat(None)
  ds = GlobalBatchShare(ds, global_batch=batch, process_index=0, process_count=1)
  ds = ds.map(TrainTransform(tok, 0, crop=crop)).map(ToCHWFloat()).batch(batch, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
  if workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it)


def bench_vlpt(pattern: str, workers: int, batch: int, batches: int, same_work: bool = False) -> float:
  if same_work:
    it = vlpt_same_work(pattern, workers, batch)
    first = next(it)
    assert first["image"].shape == (batch, 3, 224, 224) and first["image"].dtype == np.float32
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - start
    it.close()
    return batches * batch / seconds

  from vlpt.config import default_config
  from vlpt.data.pipeline import train_dataset
  from vlpt.data.tokenizers import build_tokenizer

  c = default_config()
  c.data.image_size = 224
  c.data.num_workers = workers
  c.data.train.source = f"wds:{pattern}"
  c.data.train.shuffle = True
  c.data.tokenizer = {"name": "clip_bpe", "context_length": 77}
  tok = build_tokenizer(c.data.tokenizer)
  it = iter(
    train_dataset(c.data, tokenizer=tok, global_batch=batch, seed=0, process_index=0, process_count=1)
  )
  first = next(it)
  assert first["image"].shape == (batch, 224, 224, 3), first["image"].shape
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  it.close()
  return batches * batch / seconds


def bench_open_clip(pattern: str, workers: int, batch: int, batches: int) -> float:
  from vlpt.reference import import_torch_reference

  torch, open_clip = import_torch_reference()
  import webdataset as wds

  preprocess = open_clip.image_transform(224, is_train=True)  # RandomResizedCrop (0.9, 1), bicubic
  tokenizer = open_clip.get_tokenizer("ViT-B-32")
  pipeline = wds.DataPipeline(
    wds.SimpleShardList(pattern),
    wds.split_by_worker,
    wds.tarfile_to_samples(),
    wds.shuffle(5000, initial=1000),
    wds.select(lambda s: "txt" in s and any(k in s for k in ("png", "jpg", "jpeg", "webp"))),
    wds.decode("pilrgb"),
    wds.rename(image="jpg;png;jpeg;webp", text="txt"),
    wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
    wds.to_tuple("image", "text"),
    wds.batched(batch, partial=False),
  ).repeat()
  loader = wds.WebLoader(
    pipeline, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=workers > 0
  )
  it = iter(loader)
  images, _ = next(it)
  assert tuple(images.shape) == (batch, 3, 224, 224), images.shape
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch / (time.perf_counter() - start)
  del it, loader  # its workers end with the iterator
  return rate


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--same-work", action="store_true", help="both sides produce the same tensor")
  p.add_argument("--cold", action="store_true", help="shards dropped from the page cache per run")
  p.add_argument("--repeats", type=int, default=7, help="interleaved runs per side (medians)")
  p.add_argument("--num", type=int, default=3000, help="samples in the shards")
  p.add_argument("--shard-size", type=int, default=500)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--batches", type=int, default=20, help="timed batches after one warm-up")
  p.add_argument("--shards", default=None, help="existing shards (a brace pattern) to reuse")
  p.add_argument("--shards-dir", default=None, help="write the shards here (reused if present)")
  args = p.parse_args()
  sys.path.insert(0, REPO)
  from absl import flags

  from vlpt.data.files import expand_shards

  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
  labels = ("vlpt", "open_clip") if args.same_work else ("vlpt-defaults", "open_clip-defaults")
  with tempfile.TemporaryDirectory() as tmp:
    pattern = args.shards
    listed = os.path.join(args.shards_dir or tmp, "shards.txt")
    if pattern is None and os.path.exists(listed):  # a brace pattern: webdataset reads no lists
      with open(listed) as f:
        n = sum(1 for line in f if line.strip())
      pattern = os.path.join(args.shards_dir, f"{{00000..{n - 1:05d}}}.tar")
    if pattern is None:
      pattern = build_shards(args.shards_dir or tmp, args.num, args.shard_size)
      from vlpt.data.wds_index import write_index

      write_index(expand_shards(pattern))  # as a LAION-scale run would (docs/data.md)
    print(
      f"shards: {pattern}; workers={args.workers} batch={args.batch} "
      f"timed={args.batches * args.batch} images; {'same work' if args.same_work else 'defaults'}"
      f"{', cold cache' if args.cold else ''}; {args.repeats} interleaved repeats",
      flush=True,
    )
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.repeats):
      for label in labels if r % 2 == 0 else labels[::-1]:
        if args.cold:
          drop_cache(pattern)
        if label.startswith("vlpt"):
          rate = bench_vlpt(pattern, args.workers, args.batch, args.batches, args.same_work)
        else:
          rate = bench_open_clip(pattern, args.workers, args.batch, args.batches)
        rates[label].append(rate)
        print(f"run {r + 1} {label:20s} {rate:8.1f} images/s", flush=True)
  ours, theirs = (statistics.median(rates[label]) for label in labels)
  print(f"median: {labels[0]} {ours:.1f} images/s, {labels[1]} {theirs:.1f} images/s")
  print(f"vlpt_images_per_s={ours:.1f} open_clip_images_per_s={theirs:.1f} ratio={ours / theirs:.3f}")


if __name__ == "__main__":
  main()
