"""``builtin:NAME``: small models vlpt trains itself, offline, on first use, and caches.

``builtin:demo`` is a tiny CLIP trained on the built-in synthetic dataset (the pretrained image
tower of ``configs/lit.py:smoke``). The cache is ``$VLPT_CACHE`` (default ``~/.cache/vlpt``)
``/builtin/NAME``, a vlpt export. Training runs vlpt's own trainer in a subprocess
(``python -m vlpt.train.builtin``), so this module needs nothing above the config layer.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import ml_collections

from vlpt.config import default_config
from vlpt.errors import WeightsError


def check_builtin_name(name: str) -> None:
  if name not in BUILTINS:
    raise WeightsError(
      f"unknown built-in model {BUILTIN_PREFIX}{name!r}; known: "
      f"{', '.join(BUILTIN_PREFIX + n for n in BUILTINS)}"
    )


BUILTIN_PREFIX = "builtin:"
BUILTIN_META = "builtin.json"


def _builtin_demo_config() -> ml_collections.ConfigDict:
  """The tiny CLIP behind ``builtin:demo`` (configs/demo.py's towers, ~1 minute on 2 CPU cores):
  micro/8 ViT at 32 px, micro text tower, word tokenizer, 200 steps of 128 synthetic pairs."""
  c = default_config()
  c.host_device_count = 8
  c.seed = 0
  c.total_steps = 200
  c.batch_size = 128
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 1
  c.async_checkpointing = False
  c.model.embed_dim = 64
  c.model.image.variant = "micro/8"
  c.model.text.variant = "micro"
  c.data.image_size = 32
  c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": 16})
  c.data.train.source = "synthetic"
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.05
  c.eval.batch_size = 256
  c.eval.datasets = ml_collections.ConfigDict(
    {"heldout": {"source": "synthetic", "split": "eval", "num_examples": 512}}
  )
  return c


# name -> (recipe version, config function); a cached model of another version is rebuilt
BUILTINS: dict[str, tuple[int, Any]] = {"demo": (1, _builtin_demo_config)}


def cache_root() -> str:
  """``$VLPT_CACHE``, else ``~/.cache/vlpt``."""
  return os.path.expanduser(os.environ.get("VLPT_CACHE") or os.path.join("~", ".cache", "vlpt"))


def builtin_path(name: str) -> str:
  return os.path.join(cache_root(), "builtin", name)


def _builtin_ready(path: str, name: str) -> bool:
  try:
    with open(os.path.join(path, BUILTIN_META)) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return meta.get("version") == BUILTINS[name][0] and os.path.isfile(
    os.path.join(path, "vlpt_model.json")
  )


class _DirLock:
  """An exclusive advisory lock (fcntl) on ``path``; a no-op where fcntl does not exist."""

  def __init__(self, path: str):
    self.path, self.file = path, None

  def __enter__(self):
    try:
      import fcntl
    except ImportError:
      return self
    self.file = open(self.path, "a")
    fcntl.flock(self.file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      self.file.close()  # releases the lock


def ensure_builtin(name: str) -> str:
  """The cached export of ``builtin:NAME``, trained first if missing or of an older recipe.

  Training runs vlpt's own trainer in a subprocess (8 simulated CPU devices, so the result does
  not depend on the caller's accelerators) into a temporary directory beside the cache entry,
  which is renamed into place only when complete: an interrupted run never leaves a half-written
  model, and concurrent callers wait on a lock file and then reuse the first one's result.
  """
  import subprocess
  import sys
  import tempfile

  check_builtin_name(name)
  final = builtin_path(name)
  if _builtin_ready(final, name):
    return final
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  with _DirLock(os.path.join(parent, f".{name}.lock")):
    if _builtin_ready(final, name):
      return final
    for entry in os.listdir(parent):  # leftovers of interrupted runs (we hold the lock)
      if entry.startswith(f".{name}.tmp-"):
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
      print(
        f"[vlpt] {BUILTIN_PREFIX}{name} is not cached yet: training it once with vlpt's "
        f"trainer on the built-in synthetic data (about a minute on 2 CPU cores) into "
        f"{final}",
        file=sys.stderr,
        flush=True,
      )
      package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      env = dict(os.environ)
      env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
      env["JAX_PLATFORMS"] = "cpu"
      flags = " ".join(
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
      )
      env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
      proc = subprocess.run(
        [sys.executable, "-m", "vlpt.train.builtin", name, tmp], env=env, capture_output=True, text=True
      )
      if proc.returncode != 0:
        raise WeightsError(
          f"training {BUILTIN_PREFIX}{name} failed (exit {proc.returncode}):\n"
          f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
      stale = os.path.join(tmp, "stale")
      if os.path.exists(final):  # an older recipe's model: replaced as a whole
        os.replace(final, stale)
      os.replace(os.path.join(tmp, "model"), final)  # appears complete or not at all
      with open(os.path.join(final, BUILTIN_META)) as f:
        metrics = json.load(f).get("metrics", {})
      shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()) if k.endswith("zeroshot/top1"))
      print(f"[vlpt] {BUILTIN_PREFIX}{name} ready ({shown})", file=sys.stderr, flush=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return final
