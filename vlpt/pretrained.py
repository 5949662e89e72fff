"""``vlpt.load``: any supported checkpoint as ready-to-use encoders, tokenizer and preprocessing.

Sources (detected from the path):
- a vlpt export directory (``vlpt_model.json`` + ``model.safetensors``, written by
  ``vlpt-convert --to vlpt`` or :meth:`Pretrained.save`);
- a vlpt training workdir (``vlpt_config.json`` + ``checkpoints/``): its latest checkpoint;
- an open_clip directory (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``);
- an HF transformers ``CLIPModel`` / ``SiglipModel`` directory (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``), with its own tokenizer files when present;
- a big_vision SigLIP ``.npz``;
- ``builtin:NAME``: a small model vlpt trains itself, offline, on first use and caches under
  ``$VLPT_CACHE`` (default ``~/.cache/vlpt``) ``/builtin/NAME``: ``builtin:demo`` is a tiny CLIP
  trained on the built-in synthetic dataset (the pretrained image tower of
  ``configs/lit.py:smoke``).
Nothing is unpickled: safetensors and npz load without torch, ``.bin`` through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpt.config import WORKDIR_CONFIG
from vlpt.data.preprocess import Preprocess
from vlpt.weights.io import read_tensors, write_safetensors
from vlpt.weights.mapping import WeightsError

VLPT_MODEL_JSON = "vlpt_model.json"
VLPT_WEIGHTS = "model.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_PRE = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash",
                  interpolation="bilinear")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model", "vocab.txt")


@dataclasses.dataclass
class Bundle:
  """A model in vlpt terms: config, canonical flat params, tokenizer and preprocessing specs."""

  model: dict
  params: dict[str, np.ndarray]
  tokenizer: dict | None  # a config.data.tokenizer-style dict (name + kwargs), paths absolute
  preprocess: Preprocess
  source: str


def detect_format(path: str) -> str:
  """"vlpt", "workdir", "open_clip", "hf", "big_vision" or "builtin" (a WeightsError if none fits).

  Cheap: a ``builtin:NAME`` source is only checked by name here (trained on first read).
  """
  if path.startswith(BUILTIN_PREFIX):
    name = path[len(BUILTIN_PREFIX):]
    if name not in BUILTINS:
      raise WeightsError(f"unknown built-in model {path!r}; known: "
                         f"{', '.join(BUILTIN_PREFIX + n for n in BUILTINS)}")
    return "builtin"
  if os.path.isfile(path):
    if path.endswith(".npz"):
      return "big_vision"
    raise WeightsError(f"{path}: a single file must be a big_vision .npz; open_clip and HF "
                       "checkpoints are directories with their config json")
  if not os.path.isdir(path):
    raise WeightsError(f"no such checkpoint: {path}")
  has = lambda name: os.path.exists(os.path.join(path, name))  # noqa: E731
  if has(VLPT_MODEL_JSON):
    return "vlpt"
  if has(WORKDIR_CONFIG):
    return "workdir"
  if has("open_clip_config.json"):
    return "open_clip"
  if has("config.json"):
    return "hf"
  raise WeightsError(f"{path}: not a recognized checkpoint directory (expected {VLPT_MODEL_JSON}, "
                     f"{WORKDIR_CONFIG}, open_clip_config.json or an HF config.json)")


def _first_file(path: str, names: tuple[str, ...]) -> str:
  for name in names:
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise WeightsError(f"{path}: no weights file (looked for {', '.join(names)})")


def _tokenizer_from_files(path: str, context_length: int, *, pad_id: int | None = None
                          ) -> dict | None:
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    out = {"name": "hf", "path": os.path.join(path, "tokenizer.json"),
           "context_length": context_length}
  elif os.path.isfile(os.path.join(path, "vocab.json")) and \
      os.path.isfile(os.path.join(path, "merges.txt")):
    out = {"name": "hf", "path": path, "context_length": context_length}
  elif os.path.isfile(os.path.join(path, "spiece.model")):
    out = {"name": "sentencepiece", "model_path": os.path.join(path, "spiece.model"),
           "context_length": context_length}
  else:
    return None
  if pad_id is not None:
    out["pad_id"] = pad_id
  return out


def _read_open_clip(path: str) -> Bundle:
  from vlpt.weights.open_clip import from_open_clip
  with open(os.path.join(path, "open_clip_config.json")) as f:
    cfg = json.load(f)
  model_cfg = cfg.get("model_cfg", cfg)
  sd = read_tensors(_first_file(path, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                                       "model.safetensors", "pytorch_model.bin")))
  model, params = from_open_clip(sd, model_cfg)
  pre = cfg.get("preprocess_cfg", {})
  size = pre.get("size", model["image"]["image_size"])
  preprocess = Preprocess(
      image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
      mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)),
      resize_mode="squash" if pre.get("resize_mode") == "squash" else "shortest",
      interpolation=pre.get("interpolation", "bicubic"))
  ctx = model["text"]["context_length"]
  tok = _tokenizer_from_files(path, ctx)
  if tok is None and not model_cfg["text_cfg"].get("hf_tokenizer_name"):
    tok = {"name": "clip_bpe", "context_length": ctx}
  return Bundle(model, params, tok, preprocess, "open_clip")


def _read_hf(path: str) -> Bundle:
  from vlpt.weights.hf import from_hf
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  sd = read_tensors(_first_file(path, ("model.safetensors", "pytorch_model.bin")))
  model, params = from_hf(sd, config)
  kind = config["model_type"]
  ctx = model["text"]["context_length"]
  pre: dict[str, Any] = dict(SIGLIP_PRE) if kind == "siglip" else {}
  pp = os.path.join(path, "preprocessor_config.json")
  if os.path.isfile(pp):
    with open(pp) as f:
      p = json.load(f)
    if "image_mean" in p:
      pre.update(mean=tuple(p["image_mean"]), std=tuple(p["image_std"]))
    if "resample" in p:
      pre["interpolation"] = {3: "bicubic", 2: "bilinear", 0: "nearest"}.get(p["resample"],
                                                                               "bicubic")
    if "do_center_crop" in p:
      pre["resize_mode"] = "shortest" if p["do_center_crop"] else "squash"
  preprocess = Preprocess(image_size=model["image"]["image_size"], **pre)
  pad = None
  if kind == "siglip":
    pad = int((config.get("text_config") or {}).get("pad_token_id", 1))
  tok = _tokenizer_from_files(path, ctx, pad_id=pad)
  if tok is None and kind == "clip":
    tok = {"name": "clip_bpe", "context_length": ctx}
  return Bundle(model, params, tok, preprocess, "hf")


def _read_big_vision(path: str) -> Bundle:
  from vlpt.weights.big_vision import from_big_vision
  model, params = from_big_vision(read_tensors(path))
  return Bundle(model, params, None,
                Preprocess(image_size=model["image"]["image_size"], **SIGLIP_PRE), "big_vision")


def _read_vlpt(path: str) -> Bundle:
  with open(os.path.join(path, VLPT_MODEL_JSON)) as f:
    meta = json.load(f)
  if meta.get("format") != "vlpt":
    raise WeightsError(f"{path}/{VLPT_MODEL_JSON} is not a vlpt export")
  params = read_tensors(os.path.join(path, VLPT_WEIGHTS))
  tok = meta.get("tokenizer")
  if tok:
    tok = {k: (os.path.join(path, v) if k in ("path", "model_path", "vocab_path") else v)
           for k, v in tok.items()}
  return Bundle(meta["model"], params, tok, Preprocess(**meta["preprocess"]), "vlpt")


def _read_workdir(path: str, step: int | None = None) -> Bundle:
  """A training run's latest (or ``step``) checkpoint: its parameters only, read to the host."""
  import ml_collections

  from vlpt.data.tokenizers import build_tokenizer
  from vlpt.evaluation.evaluators import NORMALIZATION
  from vlpt.models import build_model
  from vlpt.train.checkpointing import Checkpointer
  from vlpt.train.trainer import resolve_model_config
  from vlpt.weights.state import flat_params
  with open(os.path.join(path, WORKDIR_CONFIG)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  model_cfg = resolve_model_config(config, build_tokenizer(config.data.tokenizer))
  model = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
  graphdef, abstract = nnx.split(model, nnx.Param)
  checkpointer = Checkpointer(path, keep=1, async_save=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}; train first")
    params = checkpointer.restore_params(step, abstract.to_pure_dict())
  finally:
    checkpointer.close()
  abstract.replace_by_pure_dict(params)
  mean, std = NORMALIZATION[config.data.normalization]
  return Bundle(model_cfg, flat_params(nnx.merge(graphdef, abstract)),
                config.data.tokenizer.to_dict(),
                Preprocess(image_size=config.data.image_size, mean=mean, std=std), "workdir")


def read_bundle(path: str) -> Bundle:
  kind = detect_format(path)
  if kind == "builtin":
    bundle = _read_vlpt(ensure_builtin(path[len(BUILTIN_PREFIX):]))
    bundle.source = path
    return bundle
  return {"vlpt": _read_vlpt, "workdir": _read_workdir, "open_clip": _read_open_clip,
          "hf": _read_hf, "big_vision": _read_big_vision}[kind](path)


# ---------------------------------------------------------------------------------------------
# builtin:NAME: small models trained by vlpt itself on first use, cached, offline
# ---------------------------------------------------------------------------------------------

BUILTIN_PREFIX = "builtin:"
BUILTIN_META = "builtin.json"


def _builtin_demo_config():
  """The tiny CLIP behind ``builtin:demo`` (configs/demo.py's towers, ~1 minute on 2 CPU cores):
  micro/8 ViT at 32 px, micro text tower, word tokenizer, 200 steps of 128 synthetic pairs."""
  import ml_collections

  from vlpt.config import default_config
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
  c.model.image.image_size = 32
  c.model.text.variant = "micro"
  c.data.image_size = 32
  c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": 16})
  c.data.train.source = "synthetic"
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.05
  c.eval.batch_size = 256
  c.eval.datasets = ml_collections.ConfigDict(
      {"heldout": {"source": "synthetic", "split": "eval", "num_examples": 512}})
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
  return (meta.get("version") == BUILTINS[name][0]
          and os.path.isfile(os.path.join(path, VLPT_MODEL_JSON)))


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

  if name not in BUILTINS:
    raise WeightsError(f"unknown built-in model {BUILTIN_PREFIX}{name}; known: "
                       f"{', '.join(BUILTINS)}")
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
      print(f"[vlpt] {BUILTIN_PREFIX}{name} is not cached yet: training it once with vlpt's "
            f"trainer on the built-in synthetic data (about a minute on 2 CPU cores) into "
            f"{final}", file=sys.stderr, flush=True)
      package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      env = dict(os.environ)
      env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
      env["JAX_PLATFORMS"] = "cpu"
      flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                       if not f.startswith("--xla_force_host_platform_device_count"))
      env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
      proc = subprocess.run(
          [sys.executable, "-c", "import sys; from vlpt.pretrained import _train_builtin; "
           "_train_builtin(sys.argv[1], sys.argv[2])", name, tmp],
          env=env, capture_output=True, text=True)
      if proc.returncode != 0:
        raise WeightsError(f"training {BUILTIN_PREFIX}{name} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
      stale = os.path.join(tmp, "stale")
      if os.path.exists(final):  # an older recipe's model: replaced as a whole
        os.replace(final, stale)
      os.replace(os.path.join(tmp, "model"), final)  # appears complete or not at all
      with open(os.path.join(final, BUILTIN_META)) as f:
        metrics = json.load(f).get("metrics", {})
      shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())
                       if k.endswith("zeroshot/top1"))
      print(f"[vlpt] {BUILTIN_PREFIX}{name} ready ({shown})", file=sys.stderr, flush=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return final


def _train_builtin(name: str, out: str) -> None:
  """Subprocess entry: trains ``builtin:NAME`` in ``out/run`` and exports it to ``out/model``."""
  from vlpt.train.trainer import train
  version, make_config = BUILTINS[name]
  config = make_config()
  workdir = os.path.join(out, "run")
  results = train(config, workdir)
  bundle = _read_workdir(workdir)
  bundle.source = BUILTIN_PREFIX + name
  model_dir = os.path.join(out, "model")
  write_bundle(bundle, model_dir, "vlpt")
  meta = {"name": name, "version": version, "metrics": {k: float(v) for k, v in results.items()},
          "config": json.loads(config.to_json_best_effort())}
  with open(os.path.join(model_dir, BUILTIN_META), "w") as f:
    json.dump(meta, f, indent=2)


def _copy_tokenizer_files(tok: dict | None, dst: str) -> dict | None:
  """Copies the tokenizer's files into ``dst``; returns the config with relative paths."""
  if not tok:
    return tok
  out = dict(tok)
  for key in ("path", "model_path", "vocab_path"):
    if key in out and out[key]:
      src = out[key]
      if os.path.isdir(src):
        for name in _TOKENIZER_FILES:
          if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
        out[key] = "."
      else:
        shutil.copy(src, os.path.join(dst, os.path.basename(src)))
        out[key] = os.path.basename(src)
  return out


def write_bundle(bundle: Bundle, dst: str, to: str = "vlpt") -> None:
  """Writes ``bundle`` as a vlpt export, an open_clip directory or an HF directory."""
  if to not in ("vlpt", "open_clip", "hf"):
    raise WeightsError(f"unknown target format {to!r}; choose vlpt, open_clip or hf")
  if os.path.exists(dst) and os.listdir(dst):
    raise WeightsError(f"{dst} exists and is not empty; choose a new directory (nothing was "
                       "overwritten)")
  # convert fully before touching the disk, so a refusal leaves nothing half-written
  cfg = sd = None
  if to == "open_clip":
    from vlpt.weights.open_clip import to_open_clip
    cfg, sd = to_open_clip(bundle.model, bundle.params)
  elif to == "hf":
    from vlpt.weights.hf import to_hf
    cfg, sd = to_hf(bundle.model, bundle.params)
  final, dst = dst, dst.rstrip("/") + ".partial"
  shutil.rmtree(dst, ignore_errors=True)
  os.makedirs(dst)
  try:
    _write_files(bundle, dst, to, cfg if to != "vlpt" else None, sd if to != "vlpt" else None)
  except BaseException:
    shutil.rmtree(dst, ignore_errors=True)
    raise
  if os.path.isdir(final):
    os.rmdir(final)  # empty, checked above
  os.replace(dst, final)  # the directory appears complete or not at all


def _write_files(bundle: Bundle, dst: str, to: str, cfg: dict | None,
                 sd: dict[str, np.ndarray] | None) -> None:
  pre = bundle.preprocess
  if to == "vlpt":
    meta = {"format": "vlpt", "version": 1, "model": bundle.model, "preprocess": pre.to_dict(),
            "tokenizer": _copy_tokenizer_files(bundle.tokenizer, dst), "source": bundle.source}
    write_safetensors(os.path.join(dst, VLPT_WEIGHTS), bundle.params)
    with open(os.path.join(dst, VLPT_MODEL_JSON), "w") as f:
      json.dump(meta, f, indent=2)
  elif to == "open_clip":
    write_safetensors(os.path.join(dst, "open_clip_model.safetensors"), sd)
    preprocess_cfg = {"size": pre.image_size, "mean": list(pre.mean), "std": list(pre.std),
                      "interpolation": pre.interpolation, "resize_mode": pre.resize_mode}
    with open(os.path.join(dst, "open_clip_config.json"), "w") as f:
      json.dump({"model_cfg": cfg, "preprocess_cfg": preprocess_cfg}, f, indent=2)
    _copy_tokenizer_files(bundle.tokenizer if (bundle.tokenizer or {}).get("name") == "hf"
                          else None, dst)
  else:
    write_safetensors(os.path.join(dst, "model.safetensors"), sd, metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(cfg, f, indent=2)
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}[pre.interpolation]
    crop = pre.resize_mode == "shortest"
    proc = {"image_processor_type": "CLIPImageProcessor" if cfg["model_type"] == "clip"
            else "SiglipImageProcessor", "do_resize": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean),
            "image_std": list(pre.std), "resample": resample, "do_center_crop": crop,
            "size": ({"shortest_edge": pre.image_size} if crop
                     else {"height": pre.image_size, "width": pre.image_size})}
    if crop:
      proc["crop_size"] = {"height": pre.image_size, "width": pre.image_size}
    with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
      json.dump(proc, f, indent=2)
    tok = bundle.tokenizer or {}
    if tok.get("name") == "clip_bpe":
      from vlpt.data.tokenizers import write_hf_clip_vocab
      write_hf_clip_vocab(dst)
    else:
      _copy_tokenizer_files(tok if tok.get("name") in ("hf", "sentencepiece") else None, dst)


class Pretrained:
  """A loaded model: jitted L2-normalized encoders, its tokenizer and image preprocessing."""

  def __init__(self, bundle: Bundle, *, dtype: str = "float32"):
    from vlpt.models import build_model
    from vlpt.weights.state import assign_params
    self.bundle = bundle
    self.config = dict(bundle.model, dtype=dtype)
    self.model = build_model(self.config, nnx.Rngs(0))
    assign_params(self.model, bundle.params)
    self.preprocess = bundle.preprocess
    self._tokenizer = None
    graphdef, state = nnx.split(self.model)
    self._image = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(x))
    self._text = jax.jit(lambda s, t: nnx.merge(graphdef, s).encode_text(t))
    self._state = state

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      if not self.bundle.tokenizer:
        raise WeightsError(f"this {self.bundle.source} checkpoint ships no tokenizer; pass "
                           "vlpt.load(..., tokenizer={'name': ..., ...})")
      from vlpt.data.tokenizers import build_tokenizer
      self._tokenizer = build_tokenizer(self.bundle.tokenizer)
    return self._tokenizer

  def encode_image(self, images) -> jax.Array:
    """Preprocessed float images [B, H, W, 3] -> L2-normalized embeddings [B, D]."""
    return self._image(self._state, jnp.asarray(images, jnp.float32))

  def encode_text(self, token_ids) -> jax.Array:
    """Token ids [B, L] -> L2-normalized embeddings [B, D]."""
    return self._text(self._state, jnp.asarray(token_ids, jnp.int32))

  @property
  def logit_scale(self) -> float:
    return float(math.exp(float(self.bundle.params["logit_scale"])))

  @property
  def logit_bias(self) -> float | None:
    b = self.bundle.params.get("logit_bias")
    return None if b is None else float(b)

  def save(self, dst: str, to: str = "vlpt") -> None:
    write_bundle(self.bundle, dst, to)


def load(path: str, *, image_size: int | None = None, context_length: int | None = None,
         tokenizer: dict | None = None, dtype: str = "float32") -> Pretrained:
  """Loads any supported source (see the module docstring); optionally resizes positions."""
  bundle = read_bundle(path)
  if image_size or context_length:
    from vlpt.weights.resize import resize_model
    model, params = resize_model(bundle.model, bundle.params, image_size=image_size,
                                 context_length=context_length)
    pre = bundle.preprocess
    if image_size:
      pre = dataclasses.replace(pre, image_size=image_size)
    tok = bundle.tokenizer
    if context_length and tok:
      tok = dict(tok, context_length=context_length)
    bundle = Bundle(model, params, tok, pre, bundle.source)
  if tokenizer is not None:
    bundle.tokenizer = dict(tokenizer)
  return Pretrained(bundle, dtype=dtype)
