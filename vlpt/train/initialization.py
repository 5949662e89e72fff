"""Where a run's parameters start (``config.init``): any checkpoint vlpt reads, whole or by
tower, resized to the config, and which towers stay locked.

:func:`read_checkpoint` is the one reader of every source that ``vlpt.load``,
``config.init.checkpoint`` and ``config.teacher.checkpoint`` accept: the formats of
:mod:`vlpt.weights.formats` plus a training workdir, whose checkpoints the trainer owns.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from vlpt import sharding as S
from vlpt import storage
from vlpt.config import WORKDIR_CONFIG, config_from_dict, overlay
from vlpt.data.normalization import NORMALIZATION
from vlpt.data.preprocess import Preprocess
from vlpt.data.tokenizers import build_tokenizer
from vlpt.errors import ConfigError, WeightsError
from vlpt.models import build_model, model_kwargs
from vlpt.train.checkpointing import Checkpointer
from vlpt.weights.formats import Bundle, detect_format, read_bundle
from vlpt.weights.resize import resize_model
from vlpt.weights.state import flat_params, param_shapes, pure_tree

LOCKABLE = ("image", "text")


def check_config(config: Any) -> None:
  """``config.init`` -> ValueError naming the first problem (the checkpoint is not read)."""
  init = config.init
  towers = tuple(init.towers or ())
  parts = {"image", "text"} | ({"decoder"} if config.model.name in ("coca", "locca") else set())
  bad_lock = set(init.lock_towers) - set(LOCKABLE)
  if bad_lock:
    raise ValueError(
      f"config.init.lock_towers={tuple(init.lock_towers)}: only 'image' and 'text' towers can be locked"
    )
  bad = set(towers) - parts
  if bad:
    raise ValueError(
      f"config.init.towers={towers}: choose among {sorted(parts)} (each with its "
      "projection); () loads the whole model"
    )
  if towers and not init.checkpoint:
    raise ValueError(
      f"config.init.towers={towers} needs config.init.checkpoint (the checkpoint to take them from)"
    )
  if init.architecture_from_checkpoint and not init.checkpoint:
    raise ValueError(
      "config.init.architecture_from_checkpoint=True needs config.init.checkpoint (the "
      "checkpoint whose architecture to train)"
    )
  if init.architecture_from_checkpoint and towers:
    raise ValueError(
      f"config.init.architecture_from_checkpoint=True takes the whole architecture; with "
      f"config.init.towers={towers} describe the new towers in config.model instead"
    )
  loaded = set(towers or parts) if init.checkpoint else set()
  random = [t for t in init.lock_towers if t not in loaded]
  if random and not init.allow_random_lock:
    where = (
      "config.init.checkpoint is not set"
      if not init.checkpoint
      else f"config.init.towers={towers} does not load it"
    )
    raise ValueError(
      f"config.init.lock_towers={tuple(init.lock_towers)} would freeze the "
      f"randomly initialized {' and '.join(random)} tower ({where}); load it from "
      "a checkpoint, or set config.init.allow_random_lock=True if a frozen random "
      "tower is intended"
    )
  if init.checkpoint:
    try:
      detect_format(init.checkpoint)
    except WeightsError as e:
      raise ValueError(f"config.init.checkpoint: {e}") from None


def step_directory(path: str) -> tuple[str, int] | None:
  """``WORKDIR/checkpoints/STEP`` -> (WORKDIR, STEP); None for any other path."""
  parent, name = storage.split(path)
  workdir, checkpoints = storage.split(parent)
  if (
    name.isdigit()
    and checkpoints == "checkpoints"
    and storage.isfile(storage.join(workdir, WORKDIR_CONFIG))
  ):
    return workdir or ".", int(name)
  return None


WEIGHTS = ("ema", "raw")  # a workdir's weights to read: its EMA when it has one, or its parameters


def read_checkpoint(path: str, step: int | None = None, *, weights: str = "ema") -> Bundle:
  """Any source ``vlpt.load`` accepts, as a :class:`~vlpt.weights.formats.Bundle`: a workdir's
  latest checkpoint, or ``step`` (also named as ``WORKDIR/checkpoints/STEP``); of a workdir, its
  EMA weights when it has them (``weights="raw"``: its parameters; see :func:`read_workdir`)."""
  at_step = step_directory(path)
  if at_step is not None:
    if step is not None and step != at_step[1]:
      raise WeightsError(f"{path} is step {at_step[1]}, not the requested step {step}")
    return read_workdir(*at_step, weights=weights)
  if detect_format(path) == "workdir":
    return read_workdir(path, step, weights=weights)
  if step is not None:
    raise WeightsError(f"{path} is not a training workdir: a step applies to workdirs only")
  return read_bundle(path)


def read_workdir(path: str, step: int | None = None, *, weights: str = "ema") -> Bundle:
  """A training run's latest (or ``step``) checkpoint: its weights only, read to the host.

  ``weights="ema"``: the EMA weights when the checkpoint has them (``config.ema.decay``; they are
  what the run evaluated), else its parameters; ``"raw"``: the parameters. So ``vlpt.load``,
  ``vlpt-convert``, ``config.init.checkpoint`` and ``config.teacher.checkpoint`` of a workdir
  take its EMA weights; the bundle's source then reads ``workdir EMA``.
  """
  if weights not in WEIGHTS:
    raise WeightsError(f"weights={weights!r}: choose among {WEIGHTS}")
  config = config_from_dict(json.loads(storage.read_text(storage.join(path, WORKDIR_CONFIG))))
  tokenizer = build_tokenizer(config.data.tokenizer)
  model_cfg = model_kwargs(
    config.model,
    image_size=config.data.image_size,
    vocab_size=tokenizer.vocab_size,
    context_length=tokenizer.context_length,
  )
  model = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
  graphdef, abstract = nnx.split(model, nnx.Param)
  checkpointer = Checkpointer(path, keep=1, async_save=False)
  try:
    steps = checkpointer.all_steps()
    step = (steps[-1] if steps else None) if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}; train first")
    if step not in steps:
      raise WeightsError(f"{path} has no checkpoint of step {step}; it has {steps}")
    part = "ema" if weights == "ema" and checkpointer.has_ema(step) else "params"
    params = checkpointer.restore_params(step, abstract.to_pure_dict(), part=part)
  finally:
    checkpointer.close()
  abstract.replace_by_pure_dict(params)
  mean, std = NORMALIZATION[config.data.normalization]
  return Bundle(
    model_cfg,
    flat_params(nnx.merge(graphdef, abstract)),
    config.data.tokenizer.to_dict(),
    Preprocess(image_size=config.data.image_size, mean=mean, std=std),
    "workdir EMA" if part == "ema" else "workdir",
  )


def place(value: Any, sharding: jax.sharding.Sharding, dtype: Any = np.float32) -> jax.Array:
  """A host array as a global array with ``sharding`` (each device reads its own slice)."""
  value = np.asarray(value).astype(dtype)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


ARCHITECTURE_HINT = (
  "print the checkpoint's architecture with `vlpt-convert {path} --print-config`, or set "
  "config.init.architecture_from_checkpoint=True to train with it (its towers, tokenizer, "
  "resolution and normalization)"
)
_read: dict[str, Bundle] = {}  # config.init.checkpoint, read once per run (see _checkpoint)


def architecture(bundle: Bundle) -> dict:
  """The config keys that describe ``bundle``'s architecture, as a nested dict to
  :func:`vlpt.config.overlay` onto a config: ``model`` (towers as their constructor kwargs) and
  ``data`` (``image_size``, ``tokenizer`` when the checkpoint names one, ``normalization`` when
  its mean/std are a known pair, ``interpolation``)."""
  model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in bundle.model.items()}
  image_size = model["image"].pop("image_size")
  for key in ("vocab_size", "context_length"):  # (the tokenizer's, filled in by model_kwargs)
    model["text"].pop(key, None)
  if model.get("decoder"):
    model["decoder"] = {
      k: v for k, v in model["decoder"].items() if k not in ("vocab_size", "context_length")
    }
  data: dict[str, Any] = {"image_size": int(image_size)}
  if bundle.tokenizer:
    data["tokenizer"] = dict(bundle.tokenizer)
  pre = bundle.preprocess
  for name, (mean, std) in NORMALIZATION.items():
    if np.allclose(mean, pre.mean, atol=1e-4) and np.allclose(std, pre.std, atol=1e-4):
      data["normalization"] = name
      break
  if pre.interpolation in ("bicubic", "bilinear"):  # (the filters the training pipeline has)
    data["interpolation"] = pre.interpolation
  return {"model": model, "data": data}


def resolve_architecture(config: Any) -> Any:
  """``config`` with ``config.init.checkpoint``'s architecture (:func:`architecture`) in place of
  its own when ``config.init.architecture_from_checkpoint`` is set (a copy; the log says what was
  taken); otherwise ``config`` itself, and nothing is read."""
  path = config.init.checkpoint
  if not config.init.architecture_from_checkpoint:
    return config  # (validation checks config.init with the rest)
  try:
    check_config(config)  # (config.init's own keys first: a typo costs no checkpoint read)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  bundle = _checkpoint(path)
  config = ml_collections.ConfigDict(config.to_dict())  # (the caller's config is left as is)
  arch = architecture(bundle)
  overlay(config, arch)
  taken = ", ".join(f"data.{k}" for k in arch["data"])
  _say(
    f"architecture from {path} ({bundle.source}): config.model, {taken}"
    + ("" if "tokenizer" in arch["data"] else " (it names no tokenizer: config.data.tokenizer kept)")
  )
  return config


def check_checkpoint_fits(setup: Any) -> None:
  """A ConfigError line when ``config.init.checkpoint`` does not fit the built model (``setup``:
  its config already validated; towers resized to its resolution and context length), naming
  the first misfit and the command that prints the checkpoint's architecture; else says what is
  loaded from where. Cheap (shapes only), so a mismatch stops a run before anything compiles; the
  checkpoint read here is kept for :func:`pretrained_params`."""
  config = setup.config
  path = config.init.checkpoint
  if not path:
    return
  bundle = _checkpoint(path)
  try:
    trees = _checkpoint_trees(config, setup.model_config, bundle)
  except (WeightsError, ValueError) as e:
    raise ConfigError(
      f"config.init.checkpoint={path!r} does not fit config.model: {e}; "
      + ARCHITECTURE_HINT.format(path=path)
    ) from None
  towers = tuple(config.init.towers or ())
  parts = " and ".join(towers) + " tower(s)" if towers else "all parameters"
  _say(f"init: {parts} from {path} ({bundle.source} checkpoint, {len(bundle.params)} tensors)")
  if trees[TRAINING_ONLY_KEY]:
    _say(
      f"init: {len(trees[TRAINING_ONLY_KEY])} training-only tensor(s) the checkpoint lacks "
      "(self-distillation heads, mask token) start from the random initialization"
    )


def _checkpoint(path: str) -> Bundle:
  """``path`` read once for this run's initialization (kept until :func:`pretrained_params`)."""
  if path not in _read:
    try:
      bundle = read_checkpoint(path)
    except (WeightsError, ValueError, OSError) as e:
      raise ConfigError(f"config.init.checkpoint={path!r}: {e}") from None
    _read.clear()
    _read[path] = bundle
  return _read[path]


def pretrained_params(setup: Any, random_params: Any = None) -> Any:
  """``config.init.checkpoint`` read, resized to the config, placed with the params' shardings
  (``setup``: a :class:`vlpt.train.setup.Setup`).

  The config's model must describe the checkpoint's architecture (:func:`check_checkpoint_fits`
  checks it up front); any mismatch is reported by tensor name. With ``config.init.towers``
  (e.g. ``("image",)`` for LiT) only those parts are taken from the checkpoint (only they must
  match it, and only they are resized); everything else keeps the random initialization drawn
  from ``config.seed`` (``random_params``, the placed random parameters; drawn again here when
  not given).
  """
  config = setup.config
  path = config.init.checkpoint
  try:
    bundle = _read.pop(path, None) or read_checkpoint(path)
    trees = _checkpoint_trees(config, setup.model_config, bundle)
  except (WeightsError, ValueError) as e:
    raise ConfigError(
      f"config.init.checkpoint={path!r}: {e}; " + ARCHITECTURE_HINT.format(path=path)
    ) from None
  shardings = setup.state_shardings.params
  dtypes = jax.tree.map(lambda a: a.dtype, setup.abstract_state.params)
  missing = trees.pop(TRAINING_ONLY_KEY)
  if None in trees and not missing:
    return jax.tree.map(place, trees[None], shardings, dtypes)
  params = random_params
  if params is None:  # the parameters initial_state draws (same key, same split); the
    # optimizer-state half of init_fn is dead code under jit
    key_data = jax.random.key_data(jax.random.key(config.seed))
    with S.activate(setup.mesh, setup.rules):
      params = jax.jit(lambda k: setup.init_fn(k).params, out_shardings=shardings)(key_data)
  random = params
  if None in trees:
    params = jax.tree.map(place, trees[None], shardings, dtypes)
  else:
    params = dict(params)
    for tower, tree in trees.items():
      params[tower] = jax.tree.map(place, tree, shardings[tower], dtypes[tower])
  for name in missing:  # training-only parts the checkpoint lacks keep their random values
    *path, leaf = (int(p) if p.isdigit() else p for p in name.split("."))
    node, source = params, random
    for part in path:
      node[part] = dict(node[part])
      node, source = node[part], source[part]
    node[leaf] = source[leaf]
  return params


# Parameters only training uses: SigLIP 2's self-distillation heads and mask token
# (vlpt.models.ssl_head). A released checkpoint has none; they start from the random init.
TRAINING_ONLY = ("image.ssl_global.", "image.ssl_patch.", "image.mask_token")
TRAINING_ONLY_KEY = "training_only_missing"


def _checkpoint_trees(config: Any, model_config: dict, bundle: Bundle) -> dict:
  """The checkpoint's parameters as pure trees of ``model_config``'s model, resized: {None:
  whole} or {tower: tree} for ``config.init.towers`` (a WeightsError names the first misfit), and
  under :data:`TRAINING_ONLY_KEY` the training-only tensors it lacks (zeros in the trees)."""
  towers = tuple(config.init.towers or ())
  whole = not towers
  _, flat = resize_model(
    bundle.model,
    bundle.params,
    image_size=config.data.image_size if whole or "image" in towers else None,
    context_length=model_config["text"]["context_length"] if whole or "text" in towers else None,
  )
  abstract_model = nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(0)))
  shapes = param_shapes(abstract_model)
  missing = [k for k in shapes if k.startswith(TRAINING_ONLY) and k not in flat]
  flat = {**flat, **{k: np.zeros(shapes[k], np.float32) for k in missing}}
  if whole:
    return {None: pure_tree(abstract_model, flat), TRAINING_ONLY_KEY: missing}
  trees = {tower: _tower_tree(abstract_model, flat, tower, towers) for tower in towers}
  loaded = tuple(f"{t}." for t in towers)
  return {**trees, TRAINING_ONLY_KEY: [k for k in missing if k.startswith(loaded)]}


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[vlpt] {message}", flush=True)


def _tower_tree(abstract_model: Any, flat: dict, tower: str, towers: tuple[str, ...]) -> Any:
  prefix = f"{tower}."
  part = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
  if not part:
    raise WeightsError(
      f"the checkpoint has no {tower!r} parameters to load (config.init.towers={towers})"
    )
  try:
    return pure_tree(getattr(abstract_model, tower), part)
  except WeightsError as e:
    raise WeightsError(f"{tower} tower: {e}") from None
