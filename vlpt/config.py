"""The configuration schema: every key vlpt understands, its defaults, and its structure.

Config files in ``configs/`` start from :func:`default_config` and change what their recipe
needs; :func:`load_config` reads one. This module is the leaf of the package: it imports neither
jax nor any other vlpt module, so a recipe loads in milliseconds and every layer may read it.

It checks only structure (:func:`check_structure`: unknown keys with a did-you-mean hint,
positive step counts, keys that moved). Each owner checks its own section (models, losses, data
sources, tokenizers, evaluation datasets, weight formats, optimizer); ``vlpt.train.validation``
calls them all and turns their errors into one ``ConfigError`` before anything compiles.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

# The run's config, written into its workdir by the trainer and read back by vlpt.load /
# vlpt-eval / vlpt-convert (a workdir is recognized by it).
WORKDIR_CONFIG = "vlpt_config.json"


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
  # several processes: they agree on a stop request (SIGTERM, Ctrl-C) every this many steps and
  # on log and checkpoint steps, through the coordination service (no collective); one process
  # checks its own flag after every step
  c.preemption_check_every_steps = 10
  # CPU only: simulate this many devices unless XLA_FLAGS already sets a count (demos, tests)
  c.host_device_count = ml_collections.FieldReference(None, field_type=int)

  # dcn_data: slices the data axis spans (multi-slice TPU; -1: the devices' slice count)
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": -1})
  c.sharding_rules = ()  # (logical name, mesh axis or axes or None) pairs over the defaults

  c.model = ml_collections.ConfigDict()
  c.model.name = "clip"
  c.model.embed_dim = 512
  # the image tower's resolution is config.data.image_size (set once, read by both)
  c.model.image = ml_collections.ConfigDict({"variant": "B/16", "pool": "token", "act": "gelu"})
  c.model.text = ml_collections.ConfigDict(
    {
      "variant": "B",
      "act": "gelu",
      # None: taken from the tokenizer
      "vocab_size": ml_collections.FieldReference(None, field_type=int),
      "context_length": ml_collections.FieldReference(None, field_type=int),
    }
  )
  c.model.init_logit_scale = math.log(1 / 0.07)
  c.model.max_logit_scale = math.log(100)
  c.model.init_logit_bias = ml_collections.FieldReference(None, field_type=float)
  c.model.dtype = "float32"  # compute dtype; "bfloat16" for speed
  # every attention layer's kernel: "xla" (any device), "cudnn" (cuDNN's fused flash attention,
  # GPU only, bf16/fp16), "auto" (JAX picks cuDNN where it applies, XLA elsewhere)
  c.model.attention = "xla"
  c.model.param_dtype = "float32"
  # CoCa (model.name = "coca"): the multimodal decoder's kwargs (width, depth, heads,
  # mlp_dim, vocab_size, context_length; None: from the text tower / tokenizer); LocCa
  # ("locca"): the same plus num_bins (box coordinate tokens; docs/models.md)
  c.model.decoder = ml_collections.ConfigDict()

  # Where the parameters start: random (from config.seed) unless a checkpoint is named
  c.init = ml_collections.ConfigDict()
  # any source vlpt.load accepts (vlpt export or workdir, open_clip dir, HF CLIP/SigLIP dir,
  # big_vision .npz, builtin:NAME); positions resized to this config
  c.init.checkpoint = ml_collections.FieldReference(None, field_type=str)
  # only these top-level parts ("image", "text", "decoder"; each with its projection) are taken
  # from the checkpoint, the rest keeps the random init (LiT: ("image",) and a new text tower,
  # possibly of another architecture than the checkpoint's); (): the whole model
  c.init.towers = ()
  # LiT (Zhai et al. 2022): towers listed here ("image", "text") get no gradient and no
  # optimizer state; a locked tower must come from the checkpoint (see towers) unless
  # allow_random_lock is set (a frozen random tower: ablations and tests only)
  c.init.lock_towers = ()
  c.init.allow_random_lock = False
  # train the checkpoint's own architecture: its towers (config.model), tokenizer, resolution
  # and normalization replace the config's (vlpt-convert SRC --print-config shows them)
  c.init.architecture_from_checkpoint = False

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "softmax"  # softmax (CLIP) | sigmoid (SigLIP)
  c.loss.impl = "gather"  # gather: b x B logits per device; ring: tiled ring, memory ~ B/n
  c.loss.tile_size = 4096  # ring tile (rows); must divide the per-device batch
  # ring only: the tiles' matmuls: "bf16" (bf16 inputs, f32 accumulation) | "highest" (f32)
  c.loss.precision = "bf16"
  c.loss.label_smoothing = 0.0  # ALIGN uses 0.1 (softmax, impl=gather)
  # Matryoshka (Kusupati et al. 2022): sum the loss over these nested embedding prefixes
  # (e.g. (32, 64, 128)); empty: the full embedding only
  c.loss.matryoshka_dims = ()
  c.loss.align_weight = 1.0  # clip_align_uniform only
  c.loss.uniform_weight = 1.0  # clip_align_uniform only
  c.loss.distill_weight = 1.0  # distill only: contrastive + distill_weight * distillation
  c.loss.caption_weight = 2.0  # CoCa only: contrastive + caption_weight * caption (Eq. 3)
  # LocCa only (model.name = "locca"; SigLIP 2, arXiv:2502.14786, Sec. 2.2): contrastive +
  # decoder_weight * (caption + aref + gcap); parallel_fraction of the decoder's sequences are
  # predicted in parallel (mask-token inputs, no causal mask: CapPa, arXiv:2306.07915)
  c.loss.decoder_weight = 1.0
  c.loss.parallel_fraction = 0.5
  # > 0: the decoder's output head and cross-entropy this many positions at a time (each chunk's
  # logits recomputed in the backward pass): [B, chunk, V] logits held instead of [B, L, V]
  c.loss.decoder_chunk_length = 0

  # A frozen teacher for the teacher losses (config.loss.name "distill" or "cwcl"): any source
  # vlpt.load accepts; it must tokenize like config.data.tokenizer
  c.teacher = ml_collections.ConfigDict()
  c.teacher.checkpoint = ml_collections.FieldReference(None, field_type=str)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | lamb (ALIGN) | adafactor (CoCa, LiT, SigLIP); vlpt.optim
  c.optimizer.lr = 5e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"  # after the linear warmup: cosine | linear decay
  c.optimizer.end_lr_factor = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  # None: the optimizer's own default (vlpt.optim.DEFAULT_EPS: AdamW/LAMB 1e-6; Adafactor's
  # epsilon1, added to the squared gradient, 1e-30)
  c.optimizer.eps = ml_collections.FieldReference(None, field_type=float)
  c.optimizer.weight_decay = 0.2
  c.optimizer.grad_clip_norm = 1.0
  # regexes over '/'-joined parameter paths; any array of rank < 2 is never decayed
  c.optimizer.no_decay = ("logit_scale", "logit_bias", "embedding", "ln_", "bias")
  c.optimizer.freeze = ()

  # EMA weights (Polyak averaging; docs/operations.md): decay > 0 keeps a float32 moving average
  # of the parameters, ema = decay * ema + (1 - decay) * params after every applied step, which
  # evaluation, vlpt-eval, exports and vlpt.load of the workdir then use. 0.0: off. One decay, no
  # warmup of it.
  c.ema = ml_collections.ConfigDict({"decay": 0.0})

  # SigLIP 2's last stage (arXiv:2502.14786, Sec. 2.3; docs/losses.md): from step
  # round(start_fraction * total_steps) on, the EMA (config.ema.decay > 0) is a teacher for a
  # local-to-global self-distillation term (SILC) and a masked patch prediction term (TIPS).
  # Needs the heads: config.model.image.ssl_head = {"prototypes": K, ...}. 0 weights: off.
  c.self_distillation = ml_collections.ConfigDict(
    {
      "weight": 0.0,  # local crops (student) vs the global view (teacher), global head
      "masked_weight": 0.0,  # masked global view (student) vs unmasked (teacher), patch head
      "start_fraction": 0.8,
      "local_crops": 4,  # local views per image (SILC: 8)
      "local_size": 96,  # px, a multiple of the patch (SILC/DINO: 96 for 224 px)
      "local_scale": (0.05, 0.4),  # area fraction of a local crop (SILC/DINO)
      "mask_ratio": 0.5,  # of the global view's patches, masked for the student
      "teacher_temp": 0.04,
      "student_temp": 0.1,
      "sinkhorn_iterations": 3,
    }
  )

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 224  # the training resolution: the pipeline's crops and the image tower's
  c.data.normalization = "clip"  # clip | siglip | none (vlpt.data.normalization)
  c.data.num_workers = 0  # grain worker processes per host
  c.data.read_threads = 2
  c.data.prefetch = 8
  # "word": DEMO-ONLY (the built-in dataset's words); own captions: clip_bpe, hf, sentencepiece,
  # wordpiece (docs/data.md)
  c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": 16})
  # source: synthetic | wds:PATTERN (dir/{00000..00009}.tar, a glob, a .txt list of shards;
  # `vlpt-data build` writes them) | tfds:NAME (array_record, read without TensorFlow) |
  # arrayrecord:PATTERN (MessagePack records) | parquet:PATTERN (image bytes + caption columns);
  # formats and keys: docs/data.md.
  # crop_scale / crop_ratio: RandomResizedCrop of file images; (1.0, 1.0): resize + center crop.
  # flip: random horizontal flips; color_jitter: brightness/contrast/saturation strength (0: off)
  # boxes: batches also carry the objects' boxes (boxes, box_labels, box_phrases; docs/data.md),
  # for LocCa-style targets; the synthetic source only
  c.data.train = ml_collections.ConfigDict(
    {
      "source": "synthetic",
      "split": "train",
      "shuffle": False,
      "random_caption": True,
      "crop_scale": (0.9, 1.0),
      "crop_ratio": (3 / 4, 4 / 3),
      "flip": False,
      "color_jitter": 0.0,
      "boxes": False,
      # several sources with sampling weights, e.g. (("wds:/a/{0..99}.tar", 0.7),
      # ("wds:/b/shards.txt", 0.3)); when set it replaces `source`
      "mixture": (),
      # access: random (each example read on its own: local disks) | stream (wds, arrayrecord,
      # parquet: each process reads whole shards, shuffled per epoch, examples shuffled within
      # windows of stream_window shards; gs:// shards are fetched into stream_cache, default a
      # temp folder)
      "access": "random",
      "stream_window": 4,
      "stream_cache": "",
      # NaFlex training (SigLIP 2, Sec. 2.4; needs config.model.image.naflex): when `lengths` is
      # set, each step draws one sequence length and takes token_budget // length examples (a
      # multiple of the batch shards; config.batch_size is not used), each cropped at an aspect
      # ratio (width / height) from `aspect_ratios` and kept at it (docs/models.md)
      "naflex": ml_collections.ConfigDict(
        {"lengths": (), "token_budget": 0, "aspect_ratios": (0.5, 2.0)}
      ),
    }
  )
  c.data.interpolation = "bicubic"  # bicubic | bilinear (wds/tfds resizing)
  # wds/tfds: unusable examples (undecodable image, empty caption, truncated tar) are replaced by
  # the next usable one and logged as data/skipped_<reason>; above this fraction of the examples
  # a process read (once it read bad_fraction_min_reads) training stops naming the worst shard
  c.data.max_bad_fraction = 0.1
  # a tokenizer that maps more than this fraction of (256 sampled) training captions to its unknown
  # token stops the run before training (e.g. the demo-only word tokenizer on own captions)
  c.data.max_unknown_fraction = 0.1
  c.data.bad_fraction_min_reads = 256
  c.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
  # the image / caption field of parquet columns, arrayrecord records and tfds features;
  # None: found by name (image, jpg, png, ... / caption, text, txt, captions, ...)
  c.data.image_field = ml_collections.FieldReference(None, field_type=str)
  c.data.caption_field = ml_collections.FieldReference(None, field_type=str)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256  # global
  # name -> {source, split, num_examples, tasks, ...}: the evaluation suite; every key and its
  # default in vlpt.evaluation.suite.DATASET_DEFAULTS, documented in docs/evaluation.md
  c.eval.datasets = ml_collections.ConfigDict()
  c.eval.at_end = True
  return c


def recipe_variants(
  arg: str | None, recipe: str, sizes: dict[str, Any], default: str, allowed: Sequence[str]
) -> tuple[Any, set[str]]:
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
    {"heldout": {"source": "synthetic", "split": "eval", "num_examples": 128}}
  )


# Towers this large scan their blocks (one block is traced and compiled whatever the depth:
# minutes, not tens of minutes, for a pod-sized compile) and keep only the outputs of the weight
# matmuls for the backward pass ("dots_no_batch": the attention scores and elementwise work are
# recomputed, the activation memory of a block falls several-fold); docs/scale.md has the figures.
LARGE_TOWERS = ("L", "H", "g", "g-opt", "So400m")


def large_tower_defaults(c: ml_collections.ConfigDict, remat: str = "dots_no_batch") -> None:
  """Scan and remat for every tower of ViT-L size or deeper than 16 blocks, unless the recipe set
  them; called by the recipes after they choose their towers."""
  towers = [c.model.image, c.model.text] + ([c.model.decoder] if c.model.get("decoder") else [])
  for tower in towers:
    size = str(tower.get("variant", "")).split("/")[0]
    if size in LARGE_TOWERS or (tower.get("depth") or 0) > 16:
      with tower.unlocked():
        if tower is not c.model.get("decoder"):  # a decoder with a KV cache does not scan
          tower.scan = tower.get("scan", True)
        tower.remat = tower.get("remat", remat)


def siglip_towers(image_variant: str, **text: Any) -> tuple[dict, dict]:
  """big_vision's SigLIP tower layout (MAP head, no class token or image projection, tanh GELU,
  a bidirectional text tower pooled at its last token, projected with a bias), as vlpt reads HF
  SiglipModel / Siglip2Model and big_vision checkpoints: (image, text) tower dicts; ``text``:
  the text tower's size keys (``variant``, default "B", or explicit dimensions)."""
  image = {
    "variant": image_variant,
    "pool": "map",
    "class_token": False,
    "patch_bias": True,
    "ln_pre": False,
    "proj": False,
    "act": "gelu_tanh",
    "norm_eps": 1e-6,
  }
  tower = {
    "variant": "B",
    **text,
    "causal": False,
    "pool": "last",
    "proj": True,
    "proj_bias": True,
    "act": "gelu_tanh",
    "norm_eps": 1e-6,
    "vocab_size": ml_collections.FieldReference(None, field_type=int),
    "context_length": ml_collections.FieldReference(None, field_type=int),
  }
  return image, tower


def imagenet_zeroshot_eval(c: ml_collections.ConfigDict) -> None:
  """The recipes' headline evaluation: zero-shot ImageNet-1k (TFDS imagenet2012 validation)."""
  c.eval.batch_size = 1024
  c.eval.datasets = ml_collections.ConfigDict(
    {"imagenet": {"source": "tfds:imagenet2012", "split": "validation", "tasks": ("zeroshot",)}}
  )


# Keys that moved in vlpt 0.2 -> where they live now. Old keys keep working for one release: they
# are moved into place with a one-line notice (see :func:`migrate`).
MOVED_KEYS = {
  "model.init_from": "init.checkpoint",
  "model.init_towers": "init.towers",
  "model.lock_towers": "init.lock_towers",
  "model.allow_random_lock": "init.allow_random_lock",
  "model.caption_weight": "loss.caption_weight",
  "model.image.image_size": "data.image_size",
  "teacher.init_from": "teacher.checkpoint",
}

# Sections whose keys their owners check (tower constructors' keyword arguments, a tokenizer's
# options, evaluation datasets).
SECTIONS_WITH_FREE_KEYS = (
  "eval.datasets",
  "data.tokenizer",
  "model.image",
  "model.text",
  "model.decoder",
)

POSITIVE_INTS = (
  "total_steps",
  "batch_size",
  "accumulation_steps",
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "preemption_check_every_steps",
)


def _get(config: Any, path: str) -> tuple[bool, Any]:
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False, None
    node = node[part]
  return True, node


def set_path(config: Any, path: str, value: Any) -> None:
  """``config.<path> = value`` for a dotted ``path`` (the caller unlocks the config if needed)."""
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _delete(config: Any, path: str) -> None:
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  del node[leaf]


def migrate(config: Any, *, quiet: bool = False) -> list[str]:
  """Moves keys of :data:`MOVED_KEYS` into place (in place); returns one notice per moved key.

  ``config.model.image.image_size`` is dropped when it equals ``config.data.image_size`` (the
  one owner of the resolution now); a different value is refused (ValueError), since older vlpt
  refused it too. A new key set to a non-default value beside its old key is refused as well.
  """
  notices = []
  defaults = default_config()
  for old, new in MOVED_KEYS.items():
    present, value = _get(config, old)
    if not present:
      continue
    _, current = _get(config, new)
    _, default = _get(defaults, new)
    with config.unlocked() if hasattr(config, "unlocked") else _nullcontext():
      if old == "model.image.image_size":
        if value != current:
          raise ValueError(
            f"config.model.image.image_size={value} differs from "
            f"config.data.image_size={current}; the resolution is set once now, "
            "in config.data.image_size: remove config.model.image.image_size"
          )
      elif _to_plain(current) != _to_plain(default) and _to_plain(current) != _to_plain(value):
        raise ValueError(
          f"config.{old} (moved to config.{new}) and config.{new} are both set, "
          f"to {value!r} and {current!r}; keep config.{new} only"
        )
      else:
        set_path(config, new, value)
      _delete(config, old)
    notices.append(f"config.{old} is now config.{new} (the old key is accepted until vlpt 0.3)")
  if notices and not quiet:
    for notice in notices:
      print(f"[vlpt] note: {notice}", file=sys.stderr, flush=True)
  return notices


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def _to_plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if isinstance(value, list):
    return tuple(value)
  return value


def _check_keys(config: Any, schema: Any, prefix: str = "") -> None:
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" (did you mean config.{prefix}{close[0]}?)" if close else ""
      raise ValueError(f"unknown config key 'config.{path}'{hint}")
    value, expected = config[key], schema[key]
    if (
      isinstance(value, ml_collections.ConfigDict)
      and isinstance(expected, ml_collections.ConfigDict)
      and path not in SECTIONS_WITH_FREE_KEYS
    ):
      _check_keys(value, expected, f"{path}.")


def describe_unknown_key(config: Any, path: str) -> str | None:
  """None when ``config.PATH`` exists; else 'unknown config key ...' with a hint at the first
  missing level (free-key sections: the hint comes from their owner, at validation)."""
  node, walked = config, []
  for part in path.split("."):
    prefix = ".".join(walked)
    if prefix in SECTIONS_WITH_FREE_KEYS or prefix.startswith("eval.datasets"):
      return None
    if not hasattr(node, "keys"):
      return f"config.{prefix} is a value, not a section: 'config.{path}' does not exist"
    if part not in node:
      close = difflib.get_close_matches(part, list(node.keys()), n=1)
      where = f"{prefix}." if prefix else ""
      hint = f" (did you mean config.{where}{close[0]}?)" if close else ""
      return f"unknown config key 'config.{path}'{hint}"
    node = node[part]
    walked.append(part)
  return None


def check_structure(config: Any) -> None:
  """Unknown keys (with a hint), non-positive step counts and sizes: one ValueError each."""
  migrate(config)
  _check_keys(config, default_config())
  for key in POSITIVE_INTS:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"config.{key} must be a positive integer, got {value!r}")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A config: ``'configs/demo.py:tiny'`` (the file's ``get_config('tiny')``) or a run's
  ``vlpt_config.json`` (over the defaults, moved keys migrated)."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist")
  if path.endswith(".json"):
    if variant:
      raise ValueError(f"{path}: a JSON config takes no variant (got {variant!r})")
    with open(path, encoding="utf-8") as f:
      return config_from_dict(json.load(f))
  module_spec = importlib.util.spec_from_file_location(
    f"vlpt_config_{os.path.basename(path)[:-3]}", path
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (``vlpt_config.json``) over :func:`default_config`, moved keys migrated
  quietly: keys keep their types (an override of an unset path is still a string)."""
  migrated = ml_collections.ConfigDict(saved)
  migrate(migrated, quiet=True)
  config = default_config()
  overlay(config, migrated)
  return config


def overlay(config: ml_collections.ConfigDict, values: Any, prefix: str = "") -> None:
  """Sets every leaf of the nested dict ``values`` on ``config``; the free sections (tower
  kwargs, tokenizer, eval datasets) are replaced whole. E.g. the JSON that ``vlpt-convert SRC
  --print-config`` prints, to describe a checkpoint's architecture in a config file."""
  if not isinstance(values, ml_collections.ConfigDict):
    values = ml_collections.ConfigDict(values)
  with config.unlocked():
    for key, value in values.items():
      path = f"{prefix}{key}"
      target = config.get(key) if key in config else None
      if (
        isinstance(value, ml_collections.ConfigDict)
        and isinstance(target, ml_collections.ConfigDict)
        and path not in SECTIONS_WITH_FREE_KEYS
      ):
        overlay(target, value, f"{path}.")
      else:
        config[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
