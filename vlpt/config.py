"""The configuration schema, its defaults, and validation before any expensive work.

Config files in ``configs/`` start from :func:`default_config` and change what their recipe
needs. :func:`validate` checks the whole config against this schema and the devices at hand, and
raises :class:`ConfigError` with one actionable sentence; the CLIs print it and exit non-zero
before anything is compiled.
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any, Sequence

import ml_collections

from vlpt.sharding import MESH_AXES, resolve_mesh_shape


WORKDIR_CONFIG = "vlpt_config.json"  # the run's config, written into its workdir by the trainer


class ConfigError(ValueError):
  """A configuration problem a user can fix; printed as one line, no traceback."""


class TrainingError(RuntimeError):
  """A run that must stop (e.g. repeated non-finite steps); printed as one line, exit 1."""


def default_config() -> ml_collections.ConfigDict:
  """Every key vlpt understands, with defaults. Config files override a subset."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 256  # global, over all devices of all processes
  # k > 1: exact contrastive gradient accumulation over k micro-batches (GradCache)
  c.accumulation_steps = 1
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.async_checkpointing = True
  # a step whose loss or gradient is not finite is skipped (no update); this many in a row stop
  # the run with an error (the last checkpoint is left as it was)
  c.max_consecutive_nonfinite = 10
  # testing aid: these steps get a non-finite gradient, as a poisoned batch would give
  c.debug_nonfinite_steps = ()
  # CPU only: simulate this many devices unless XLA_FLAGS already sets a count (demos, tests)
  c.host_device_count = ml_collections.FieldReference(None, field_type=int)

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.sharding_rules = ()  # (logical name, mesh axis or axes or None) pairs over the defaults

  c.model = ml_collections.ConfigDict()
  c.model.name = "clip"
  c.model.embed_dim = 512
  c.model.image = ml_collections.ConfigDict(
      {"variant": "B/16", "image_size": 224, "pool": "token", "act": "gelu"})
  c.model.text = ml_collections.ConfigDict(
      {"variant": "B", "act": "gelu",
       # None: taken from the tokenizer
       "vocab_size": ml_collections.FieldReference(None, field_type=int),
       "context_length": ml_collections.FieldReference(None, field_type=int)})
  c.model.init_logit_scale = math.log(1 / 0.07)
  c.model.max_logit_scale = math.log(100)
  c.model.init_logit_bias = ml_collections.FieldReference(None, field_type=float)
  c.model.dtype = "float32"  # compute dtype; "bfloat16" for speed
  c.model.param_dtype = "float32"
  # CoCa only (model.name = "coca"): the multimodal decoder's kwargs (width, depth, heads,
  # mlp_dim, vocab_size, context_length; None: from the text tower / tokenizer)
  c.model.decoder = ml_collections.ConfigDict()
  c.model.caption_weight = 2.0  # CoCa: total = contrastive + caption_weight * caption (Eq. 3)
  # Start from pretrained weights: any source vlpt.load accepts (vlpt export or workdir,
  # open_clip dir, HF CLIP/SigLIP dir, big_vision .npz); positions resized to this config
  c.model.init_from = ml_collections.FieldReference(None, field_type=str)
  # Only these top-level parts of the model ("image", "text", "decoder"; each with its
  # projection) are taken from init_from, the rest keeps the random init (LiT: ("image",), a new
  # text tower, possibly of another architecture than the checkpoint's); (): the whole model
  c.model.init_towers = ()
  # LiT (Zhai et al. 2022): towers listed here ("image", "text") get no gradient and no
  # optimizer state; a locked tower must come from init_from (see init_towers) unless
  # allow_random_lock is set (a frozen random tower: ablations and tests only)
  c.model.lock_towers = ()
  c.model.allow_random_lock = False

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "softmax"  # softmax (CLIP) | sigmoid (SigLIP)
  c.loss.impl = "gather"  # gather: b x B logits per device; ring: tiled ring, memory ~ B/n
  c.loss.tile_size = 4096  # ring tile (rows); must divide the per-device batch
  c.loss.label_smoothing = 0.0  # ALIGN uses 0.1 (softmax, impl=gather)
  # Matryoshka (Kusupati et al. 2022): sum the loss over these nested embedding prefixes
  # (e.g. (32, 64, 128)); empty: the full embedding only
  c.loss.matryoshka_dims = ()
  c.loss.align_weight = 1.0  # clip_align_uniform only
  c.loss.uniform_weight = 1.0  # clip_align_uniform only
  c.loss.distill_weight = 1.0  # distill only: contrastive + distill_weight * distillation

  # A frozen teacher for the teacher losses (config.loss.name "distill" or "cwcl"): any source
  # vlpt.load accepts; it must tokenize like config.data.tokenizer
  c.teacher = ml_collections.ConfigDict()
  c.teacher.init_from = ml_collections.FieldReference(None, field_type=str)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | lamb (ALIGN) | adafactor (CoCa, LiT, SigLIP); vlpt.optim
  c.optimizer.lr = 5e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"  # after the linear warmup: cosine | linear decay
  c.optimizer.end_lr_factor = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-6
  c.optimizer.weight_decay = 0.2
  c.optimizer.grad_clip_norm = 1.0
  # regexes over '/'-joined parameter paths; any array of rank < 2 is never decayed
  c.optimizer.no_decay = ("logit_scale", "logit_bias", "embedding", "ln_", "bias")
  c.optimizer.freeze = ()

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 224
  c.data.normalization = "clip"  # clip | siglip | none
  c.data.num_workers = 0  # grain worker processes per host
  c.data.read_threads = 2
  c.data.prefetch = 8
  c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": 16})
  # source: synthetic | wds:PATTERN (dir/{00000..00009}.tar, a glob, a .txt list of shards;
  # `vlpt-data build` writes them) | tfds:NAME (array_record, read without TensorFlow) |
  # arrayrecord:PATTERN (MessagePack records) | parquet:PATTERN (image bytes + caption columns);
  # formats and keys: docs/data.md.
  # crop_scale / crop_ratio: RandomResizedCrop of file images; (1.0, 1.0): resize + center crop.
  # flip: random horizontal flips; color_jitter: brightness/contrast/saturation strength (0: off)
  c.data.train = ml_collections.ConfigDict(
      {"source": "synthetic", "split": "train", "shuffle": False, "random_caption": True,
       "crop_scale": (0.9, 1.0), "crop_ratio": (3 / 4, 4 / 3), "flip": False, "color_jitter": 0.0,
       # several sources with sampling weights, e.g. (("wds:/a/{0..99}.tar", 0.7),
       # ("wds:/b/shards.txt", 0.3)); when set it replaces `source`
       "mixture": ()})
  c.data.interpolation = "bicubic"  # bicubic | bilinear (wds/tfds resizing)
  # wds/tfds: unusable examples (undecodable image, empty caption, truncated tar) are replaced by
  # the next usable one and logged as data/skipped_<reason>; above this fraction of the examples
  # a process read (once it read bad_fraction_min_reads) training stops naming the worst shard
  c.data.max_bad_fraction = 0.1
  c.data.bad_fraction_min_reads = 256
  c.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
  # the image / caption field of parquet columns, arrayrecord records and tfds features;
  # None: found by name (image, jpg, png, ... / caption, text, txt, captions, ...)
  c.data.image_field = ml_collections.FieldReference(None, field_type=str)
  c.data.caption_field = ml_collections.FieldReference(None, field_type=str)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256  # global
  # name -> {source, split, num_examples, tasks, ...}: the evaluation suite; every key and its
  # default in vlpt.evaluation.evaluators.DATASET_DEFAULTS, documented in docs/evaluation.md
  c.eval.datasets = ml_collections.ConfigDict()
  c.eval.at_end = True
  return c


def recipe_variants(arg: str | None, recipe: str, sizes: dict[str, Any], default: str,
                    allowed: Sequence[str]) -> tuple[Any, set[str]]:
  """A recipe's ``:B16,smoke``-style argument -> (the chosen size's entry, the variant names).

  Unknown names and more than one model size are refused with the choices listed.
  """
  variants = set(filter(None, (arg or "").split(",")))
  unknown = variants - set(allowed)
  if unknown:
    raise ValueError(f"unknown {recipe} variant(s) {sorted(unknown)}; choose from {tuple(allowed)}")
  chosen = variants & set(sizes)
  if len(chosen) > 1:
    raise ValueError(f"choose one model size, got {sorted(chosen)}")
  return sizes[chosen.pop() if chosen else default], variants


def smoke_run(c: ml_collections.ConfigDict) -> None:
  """A recipe's ``:smoke`` run: 20 steps of 32 on the built-in data over 8 simulated devices,
  fp32, 32 px images, the word tokenizer, held-out evaluation; the recipe sets the towers."""
  c.host_device_count = 8
  c.total_steps, c.batch_size = 20, 32
  c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 5, 20, 20
  c.model.dtype = "float32"
  c.optimizer.warmup_steps = 5
  c.data.image_size = 32
  c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": 16})
  c.data.train.source = "synthetic"
  c.data.train.shuffle = False
  c.eval.batch_size = 64
  c.eval.datasets = ml_collections.ConfigDict(
      {"heldout": {"source": "synthetic", "split": "eval", "num_examples": 128}})


def imagenet_zeroshot_eval(c: ml_collections.ConfigDict) -> None:
  """The recipes' headline evaluation: zero-shot ImageNet-1k (TFDS imagenet2012 validation)."""
  c.eval.batch_size = 1024
  c.eval.datasets = ml_collections.ConfigDict({
      "imagenet": {"source": "tfds:imagenet2012", "split": "validation", "tasks": ("zeroshot",)}})


# model towers take their classes' keyword arguments (checked against the signatures below)
_SECTIONS_WITH_FREE_KEYS = ("eval.datasets", "data.tokenizer", "model.image", "model.text",
                            "model.decoder")


def _check_keys(config: Any, schema: Any, prefix: str = "") -> None:
  for key in config.keys():
    path = f"{prefix}{key}"
    if any(path.startswith(f"{s}.") for s in _SECTIONS_WITH_FREE_KEYS):
      continue
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
      raise ConfigError(f"unknown config key 'config.{path}'{hint}")
    value, expected = config[key], schema[key]
    if isinstance(value, ml_collections.ConfigDict) and isinstance(expected,
                                                                   ml_collections.ConfigDict):
      if path not in _SECTIONS_WITH_FREE_KEYS:
        _check_keys(value, expected, f"{path}.")


def _positive_int(config: Any, key: str) -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")


def validate(config: Any, *, num_devices: int, num_processes: int = 1) -> tuple[int, ...]:
  """Checks ``config`` against the schema and the devices; returns the resolved mesh shape."""
  _check_keys(config, default_config())
  for key in ("total_steps", "batch_size", "accumulation_steps", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "keep_checkpoints"):
    _positive_int(config, key)
  try:
    mesh_shape = resolve_mesh_shape(dict(config.mesh), num_devices)
  except ValueError as e:
    raise ConfigError(f"{e} (config.mesh = {dict(config.mesh)})") from None
  unknown_axes = set(config.mesh.keys()) - set(MESH_AXES)
  if unknown_axes:
    raise ConfigError(f"config.mesh has unknown axes {sorted(unknown_axes)}; use {MESH_AXES}")
  dp = mesh_shape[0] * mesh_shape[1]
  for key in ("batch_size", "eval.batch_size"):
    value = config.batch_size if key == "batch_size" else config.eval.batch_size
    if value % dp:
      raise ConfigError(
          f"config.{key}={value} is not divisible by the data-parallel size {dp} "
          f"(mesh data x fsdp = {mesh_shape[0]} x {mesh_shape[1]}); use a multiple of {dp}")
    if value % num_processes:
      raise ConfigError(f"config.{key}={value} is not divisible by {num_processes} processes")
  k = config.accumulation_steps
  if config.batch_size % (dp * k):
    raise ConfigError(
        f"config.batch_size={config.batch_size} must split into {k} micro-batches on each of "
        f"{dp} data-parallel shards; use a multiple of {dp * k}")
  if config.data.image_size != config.model.image.image_size:
    raise ConfigError(
        f"config.data.image_size={config.data.image_size} differs from "
        f"config.model.image.image_size={config.model.image.image_size}; set them equal")
  if config.data.normalization not in ("clip", "siglip", "none"):
    raise ConfigError(f"config.data.normalization must be clip, siglip or none, got "
                      f"{config.data.normalization!r}")
  _check_paths(config)
  _check_registry_names(config)
  _check_model(config)
  _check_optimizer(config)
  from vlpt.evaluation.evaluators import check_eval_config
  try:
    check_eval_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return mesh_shape


def _check_kwargs(section: str, given: Any, cls: Any, *, fixed: tuple[str, ...]) -> None:
  import inspect
  accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", *fixed)]
  for key in given.keys():
    if key not in accepted:
      close = difflib.get_close_matches(key, accepted, n=1)
      hint = f" (did you mean {section}.{close[0]}?)" if close else ""
      raise ConfigError(f"unknown config key 'config.{section}.{key}'{hint}")


def _check_model(config: Any) -> None:
  from vlpt.models.coca import MultimodalDecoder
  from vlpt.models.text import TextTransformer
  from vlpt.models.vit import VisionTransformer
  fixed = ("embed_dim", "rngs", "dtype", "param_dtype")
  _check_kwargs("model.image", config.model.image, VisionTransformer, fixed=fixed)
  _check_kwargs("model.text", config.model.text, TextTransformer, fixed=fixed)
  _check_kwargs("model.decoder", config.model.decoder, MultimodalDecoder, fixed=fixed)
  bad_lock = set(config.model.lock_towers) - {"image", "text"}
  if bad_lock:
    raise ConfigError(f"config.model.lock_towers={tuple(config.model.lock_towers)}: only "
                      "'image' and 'text' towers can be locked")
  _check_init_and_lock(config)
  if config.model.name == "coca":
    from vlpt.models.sizes import parse_text, tower_size
    text, dec = config.model.text, config.model.decoder
    size = lambda t: tower_size(parse_text(t.get("variant", "B")),  # noqa: E731
                                **{k: t.get(k) for k in ("width", "depth", "heads", "mlp_dim")})
    widths = (config.model.embed_dim, size(text).width, size(dec).width)
    if len(set(widths)) != 1:
      raise ConfigError(f"CoCa needs config.model.embed_dim, the text tower width and the "
                        f"decoder width equal (open_clip layout), got {widths}")
    if config.model.image.get("pool", "coca") != "coca":
      raise ConfigError("CoCa needs config.model.image.pool='coca'")
    if config.accumulation_steps > 1:
      raise ConfigError("CoCa with config.accumulation_steps > 1 is not supported; raise the "
                        "number of devices or lower config.batch_size")
    if config.loss.matryoshka_dims:
      raise ConfigError("CoCa with config.loss.matryoshka_dims is not supported")
  elif config.model.decoder:
    raise ConfigError(f"config.model.decoder is for CoCa only (config.model.name="
                      f"{config.model.name!r})")
  init = config.model.init_from
  if init:
    from vlpt.pretrained import detect_format
    from vlpt.weights.mapping import WeightsError
    try:
      detect_format(init)
    except WeightsError as e:
      raise ConfigError(f"config.model.init_from: {e}") from None


def _check_init_and_lock(config: Any) -> None:
  """init_towers names loadable parts; a locked tower must be one that init_from fills."""
  model = config.model
  towers = tuple(model.get("init_towers", ()) or ())
  parts = {"image", "text"} | ({"decoder"} if model.name == "coca" else set())
  bad = set(towers) - parts
  if bad:
    raise ConfigError(f"config.model.init_towers={towers}: choose among {sorted(parts)} "
                      "(each with its projection); () loads the whole model")
  if towers and not model.init_from:
    raise ConfigError(f"config.model.init_towers={towers} needs config.model.init_from (the "
                      "checkpoint to take them from)")
  loaded = set(towers or parts) if model.init_from else set()
  random = [t for t in model.lock_towers if t not in loaded]
  if random and not model.get("allow_random_lock", False):
    where = ("config.model.init_from is not set" if not model.init_from else
             f"config.model.init_towers={towers} does not load it")
    raise ConfigError(f"config.model.lock_towers={tuple(model.lock_towers)} would freeze the "
                      f"randomly initialized {' and '.join(random)} tower ({where}); load it "
                      "from a checkpoint, or set config.model.allow_random_lock=True if a frozen "
                      "random tower is intended")


def _check_optimizer(config: Any) -> None:
  from vlpt.optim import OPTIMIZERS, SCHEDULES
  oc = config.optimizer
  if oc.name not in OPTIMIZERS:
    raise ConfigError(f"config.optimizer.name={oc.name!r} is not one of: {', '.join(OPTIMIZERS)}")
  if oc.schedule not in SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule={oc.schedule!r} is not one of: "
                      f"{', '.join(SCHEDULES)}")


def _check_registry_names(config: Any) -> None:
  from vlpt.data.sources import SOURCES
  from vlpt.data.tokenizers import TOKENIZERS
  from vlpt.losses import LOSSES, TEACHER_LOSSES
  from vlpt.models import MODELS
  from vlpt.models.sizes import parse_text, parse_vit

  teacher_loss = config.loss.name in TEACHER_LOSSES
  checks = [("config.model.name", config.model.name, MODELS),
            ("config.loss.name", config.loss.name,
             TEACHER_LOSSES if teacher_loss else LOSSES),
            ("config.data.tokenizer.name", config.data.tokenizer.name, TOKENIZERS),
            ("config.data.train.source", config.data.train.source.partition(":")[0], SOURCES)]
  for spec, _ in config.data.train.mixture:
    checks.append(("config.data.train.mixture", str(spec).partition(":")[0], SOURCES))
  for key, value, registry in checks:
    if value not in registry:
      names = registry.names() + (TEACHER_LOSSES.names() if registry is LOSSES else [])
      raise ConfigError(f"{key}={value!r} is not one of: {', '.join(names)}")
  from vlpt.losses import build_loss, build_teacher_loss
  try:
    (build_teacher_loss if teacher_loss else build_loss)(config.loss)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if teacher_loss and not config.teacher.init_from:
    raise ConfigError(f"config.loss.name={config.loss.name!r} needs a teacher: set "
                      "config.teacher.init_from to a checkpoint vlpt.load accepts")
  if config.teacher.init_from and not teacher_loss:
    raise ConfigError(f"config.teacher.init_from is used by the teacher losses only "
                      f"({', '.join(TEACHER_LOSSES.names())}), not {config.loss.name!r}")
  if config.teacher.init_from:
    from vlpt.pretrained import detect_format
    from vlpt.weights.mapping import WeightsError
    try:
      detect_format(config.teacher.init_from)
    except WeightsError as e:
      raise ConfigError(f"config.teacher.init_from: {e}") from None
    if config.model.name == "coca" or config.accumulation_steps > 1:
      raise ConfigError("teacher losses are not supported with CoCa or accumulation_steps > 1")
  if config.loss.name == "sigmoid" and config.model.init_logit_bias is None:
    raise ConfigError("config.loss.name='sigmoid' needs a logit bias: set "
                      "config.model.init_logit_bias (SigLIP: -10.0, with init_logit_scale ln 10)")
  dims = tuple(config.loss.matryoshka_dims or ())
  if dims and max(dims) > config.model.embed_dim:
    raise ConfigError(f"config.loss.matryoshka_dims={dims} exceeds config.model.embed_dim="
                      f"{config.model.embed_dim}")
  try:
    _, patch = parse_vit(config.model.image.variant)
    parse_text(config.model.text.variant)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  if config.model.image.image_size % patch:
    raise ConfigError(f"config.model.image.image_size={config.model.image.image_size} is not "
                      f"divisible by the patch size {patch} of {config.model.image.variant!r}")


def _check_paths(config: Any) -> None:
  """Sources that name files must point at existing files or directories."""
  specs = [config.data.train.source] + [d.get("source") or "" for d in
                                         config.eval.datasets.values()]
  for entry in config.data.train.mixture:
    if (len(entry) != 2 or not isinstance(entry[0], str)
        or not isinstance(entry[1], (int, float)) or entry[1] <= 0):
      raise ConfigError(f"config.data.train.mixture entries must be (source spec, positive "
                        f"weight) pairs, got {tuple(entry)!r}")
    specs.append(entry[0])
  for spec in specs:
    kind, _, arg = spec.partition(":")
    if kind in ("wds", "arrayrecord", "parquet") and arg:
      from vlpt.data.webdataset import expand_shards
      paths = expand_shards(arg)
      missing = [p for p in paths if not os.path.isfile(p)]
      if not paths or missing:
        raise ConfigError(f"data source {spec!r}: " + (
            f"{missing[0]} does not exist ({len(missing)} of {len(paths)} shard(s) missing)"
            if missing
            else "no shard matches"))
    elif kind == "files" and arg and not any(ch in arg for ch in "{*?["):
      if not os.path.exists(arg):
        raise ConfigError(f"data source {spec!r}: {arg} does not exist")
  tok = config.data.tokenizer
  for key in ("path", "model_path", "vocab_path"):
    value = tok.get(key)
    if value and not os.path.exists(os.path.expanduser(str(value))):
      raise ConfigError(f"config.data.tokenizer.{key}={value!r} does not exist (the "
                        f"{tok.name} tokenizer's file)")
  if config.data.interpolation not in ("bicubic", "bilinear"):
    raise ConfigError(f"config.data.interpolation must be bicubic or bilinear, got "
                      f"{config.data.interpolation!r}")
  lo, hi = (float(x) for x in config.data.train.crop_scale)
  if not 0 < lo <= hi <= 1:
    raise ConfigError(f"config.data.train.crop_scale={tuple(config.data.train.crop_scale)} must "
                      "satisfy 0 < min <= max <= 1")
  if not float(config.data.train.color_jitter) >= 0:
    raise ConfigError(f"config.data.train.color_jitter={config.data.train.color_jitter} must be "
                      ">= 0 (0: off)")
  if not 0 <= config.data.max_bad_fraction <= 1:
    raise ConfigError(f"config.data.max_bad_fraction={config.data.max_bad_fraction} must be in "
                      "[0, 1]")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """``'configs/demo.py:tiny'`` -> the file's ``get_config('tiny')`` (for scripts and notebooks)."""
  import importlib.util

  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      f"vlpt_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)
