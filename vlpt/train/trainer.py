"""The trainer: config -> mesh -> sharded state -> jitted step over grain batches -> orbax.

It is the only layer that knows about meshes: models name logical axes, losses name batch axes,
and this module binds both to the devices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from vlpt import sharding as S
from vlpt.config import WORKDIR_CONFIG, ConfigError, TrainingError, validate
from vlpt.data.loader import DeviceLoader
from vlpt.data.pipeline import train_dataset
from vlpt.data.tokenizers import build_tokenizer
from vlpt.evaluation.evaluators import EvalContext, Evaluator as SuiteEvaluator, normalize_images
from vlpt.losses import build_loss, build_teacher_loss
from vlpt.losses.captioning import caption_loss
from vlpt.models import build_model
from vlpt.optim import build_optimizer, learning_rate_schedule
from vlpt.train.accumulation import accumulated_value_and_grad
from vlpt.train.checkpointing import Checkpointer
from vlpt.train.state import TrainState, pure_params
from vlpt.train.train_metrics import CocaTrainMetrics, DistillTrainMetrics, TrainMetrics
from vlpt.train.writers import MetricWriter, Progress

log = logging.getLogger(__name__)


def resolve_model_config(config: ml_collections.ConfigDict, tokenizer: Any) -> dict:
  """``config.model`` as constructor kwargs, text vocabulary and length filled from the tokenizer."""
  model = config.model.to_dict()
  for key in ("init_from", "lock_towers", "caption_weight"):  # trainer settings, not model kwargs
    model.pop(key)
  for key in ("init_towers", "allow_random_lock"):  # (absent from older runs' saved configs)
    model.pop(key, None)
  decoder = model.pop("decoder")
  text = model["text"]
  if text.get("vocab_size") is None:
    text["vocab_size"] = tokenizer.vocab_size
  elif text["vocab_size"] < tokenizer.vocab_size:
    raise ConfigError(f"config.model.text.vocab_size={text['vocab_size']} is smaller than the "
                      f"tokenizer's vocabulary ({tokenizer.vocab_size}); raise it or set None")
  if text.get("context_length") is None:
    text["context_length"] = tokenizer.context_length
  elif text["context_length"] < tokenizer.context_length:
    raise ConfigError(f"config.model.text.context_length={text['context_length']} is shorter than "
                      f"the tokenizer's ({tokenizer.context_length})")
  if model["name"] == "coca":
    model["decoder"] = {"vocab_size": text["vocab_size"],
                        "context_length": text["context_length"], **decoder}
  return model


@dataclasses.dataclass
class Setup:
  """Everything built from a config, before any step runs."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: S.LogicalRules
  tokenizer: Any
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  abstract_state: TrainState  # ShapeDtypeStructs carrying their target shardings
  state_shardings: TrainState
  init_fn: Any
  model_config: dict


def build(config: ml_collections.ConfigDict) -> Setup:
  """Validates the config, builds the mesh, model structure, optimizer and state shardings."""
  validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  mesh = S.make_mesh(dict(config.mesh))
  rules = S.rules_from_config(config.sharding_rules)
  tokenizer = build_tokenizer(config.data.tokenizer)
  model_config = resolve_model_config(config, tokenizer)

  def make_model(key):
    return build_model(model_config, nnx.Rngs(params=key))

  abstract_model = nnx.eval_shape(lambda: make_model(jax.random.key(0)))
  graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError("models with non-parameter state are not supported by the trainer")
  abstract_params = abstract_params.to_pure_dict()
  tx = build_optimizer(config, abstract_params)

  def init_fn(seed_key_data):
    key = jax.random.wrap_key_data(seed_key_data)
    init_key, train_key = jax.random.split(key)
    params = pure_params(make_model(init_key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(train_key))

  param_sh = S.param_shardings(nnx.state(abstract_model, nnx.Param), mesh, rules).to_pure_dict()
  repl = S.replicated(mesh)
  key_data = jax.random.key_data(jax.random.key(config.seed))
  abstract = jax.eval_shape(init_fn, key_data)
  # moments take their parameter's sharding; frozen parameters (MaskedNode) have no state;
  # statistics not shaped like their parameter (Adafactor's factored rows/columns) are replicated
  masked = optax.transforms._masking.MaskedNode

  def state_sharding(s, sh, p):
    return s if isinstance(s, masked) else sh if tuple(s.shape) == tuple(p.shape) else repl

  opt_sh = optax.tree_map_params(tx, state_sharding, abstract.opt_state, param_sh,
                                 abstract_params, transform_non_params=lambda _: repl,
                                 is_leaf=lambda x: isinstance(x, masked))
  shardings = TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return Setup(config=config, mesh=mesh, rules=rules, tokenizer=tokenizer, graphdef=graphdef,
               tx=tx, abstract_state=abstract, state_shardings=shardings, init_fn=init_fn,
               model_config=model_config)


def initial_state(setup: Setup) -> TrainState:
  """Fresh parameters and optimizer state; ``config.model.init_from`` replaces the parameters."""
  key_data = jax.random.key_data(jax.random.key(setup.config.seed))
  with S.activate(setup.mesh, setup.rules):
    state = jax.jit(setup.init_fn, out_shardings=setup.state_shardings)(key_data)
  if setup.config.model.init_from:
    state = state.replace(params=pretrained_params(setup, state.params))
  return state


def pretrained_params(setup: Setup, random_params: Any = None) -> Any:
  """``config.model.init_from`` read, resized to the config, and placed with the params' shardings.

  The config's model must describe the checkpoint's architecture (``vlpt-convert SRC
  --print-config`` prints it); any mismatch is reported by tensor name. With
  ``config.model.init_towers`` (e.g. ``("image",)`` for LiT) only those parts are taken from the
  checkpoint (only they must match it, and only they are resized); everything else keeps the
  random initialization ``initial_state`` draws from ``config.seed`` (``random_params``, its
  placed parameters; drawn again here when not given).
  """
  from vlpt.pretrained import read_bundle
  from vlpt.weights.mapping import WeightsError
  from vlpt.weights.resize import resize_model
  from vlpt.weights.state import pure_tree
  config = setup.config
  path = config.model.init_from
  towers = tuple(config.model.get("init_towers", ()) or ())
  text = setup.model_config["text"]
  try:
    bundle = read_bundle(path)
    whole = not towers
    _, flat = resize_model(
        bundle.model, bundle.params,
        image_size=setup.model_config["image"]["image_size"] if whole or "image" in towers
        else None,
        context_length=text["context_length"] if whole or "text" in towers else None)
    abstract_model = nnx.eval_shape(lambda: build_model(setup.model_config, nnx.Rngs(0)))
    if whole:
      trees = {None: pure_tree(abstract_model, flat)}
    else:
      trees = {}
      for tower in towers:
        prefix = f"{tower}."
        part = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        if not part:
          raise WeightsError(f"the checkpoint has no {tower!r} parameters to load "
                             f"(config.model.init_towers={towers})")
        try:
          trees[tower] = pure_tree(getattr(abstract_model, tower), part)
        except WeightsError as e:
          raise WeightsError(f"{tower} tower: {e}") from None
  except (WeightsError, ValueError) as e:
    raise ConfigError(f"config.model.init_from={path!r}: {e}") from None
  shardings = setup.state_shardings.params
  dtypes = jax.tree.map(lambda a: a.dtype, setup.abstract_state.params)

  def place(value, sharding, dtype):
    value = np.asarray(value).astype(dtype)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  if None in trees:
    return jax.tree.map(place, trees[None], shardings, dtypes)
  params = random_params
  if params is None:  # the parameters initial_state draws (same key, same split); the
    # optimizer-state half of init_fn is dead code under jit
    key_data = jax.random.key_data(jax.random.key(config.seed))
    with S.activate(setup.mesh, setup.rules):
      params = jax.jit(lambda k: setup.init_fn(k).params, out_shardings=shardings)(key_data)
  params = dict(params)
  for tower, tree in trees.items():
    params[tower] = jax.tree.map(place, tree, shardings[tower], dtypes[tower])
  return params


@dataclasses.dataclass
class Teacher:
  """A frozen model for the teacher losses, placed on the training mesh (never checkpointed)."""

  graphdef: nnx.GraphDef
  params: Any
  shardings: Any
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int


_TOKENIZER_PROBES = ["a photo of a cat", "A RED circle, next to 2 squares!", "Ünïcode & 🙂"]


def load_teacher(setup: Setup) -> Teacher | None:
  """``config.teacher.init_from`` read, checked against the data's tokenizer, and placed."""
  config = setup.config
  path = config.teacher.init_from
  if not path:
    return None
  from vlpt.pretrained import read_bundle
  from vlpt.weights.mapping import WeightsError
  from vlpt.weights.resize import resize_model
  from vlpt.weights.state import pure_tree
  try:
    bundle = read_bundle(path)
  except (WeightsError, ValueError) as e:
    raise ConfigError(f"config.teacher.init_from={path!r}: {e}") from None
  tok = setup.tokenizer
  if bundle.tokenizer:
    theirs = build_tokenizer(dict(bundle.tokenizer, context_length=tok.context_length))
    if not np.array_equal(theirs(_TOKENIZER_PROBES), tok(_TOKENIZER_PROBES)):
      raise ConfigError(f"config.teacher.init_from={path!r} tokenizes text differently from "
                        f"config.data.tokenizer ({config.data.tokenizer.name}); the teacher reads "
                        "the same token ids as the student, so use its tokenizer")
  if bundle.model["text"]["vocab_size"] < tok.vocab_size:
    raise ConfigError(f"the teacher's vocabulary ({bundle.model['text']['vocab_size']}) is "
                      f"smaller than config.data.tokenizer's ({tok.vocab_size})")
  model_cfg, flat = resize_model(bundle.model, bundle.params, context_length=tok.context_length)
  model_cfg = dict(model_cfg, dtype=config.model.dtype)
  abstract = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  shardings = S.param_shardings(abstract_params, setup.mesh, setup.rules).to_pure_dict()

  def place(value, sharding):
    value = np.asarray(value, np.float32)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  params = jax.tree.map(place, pure_tree(abstract, flat), shardings)
  pre = bundle.preprocess
  return Teacher(graphdef, params, shardings, tuple(pre.mean), tuple(pre.std), pre.image_size)


def make_value_and_grad(setup: Setup, teacher: Teacher | None = None):
  """(params, batch) -> ((global loss, metrics), grads): towers under jit, loss in shard_map.

  With ``config.accumulation_steps = k > 1`` the gradient is accumulated exactly over k
  micro-batches (see ``vlpt.train.accumulation``). Locked towers (LiT) see their parameters
  through ``stop_gradient``, so no backward pass runs through them. CoCa adds the caption term.
  """
  config, mesh, graphdef = setup.config, setup.mesh, setup.graphdef
  batch_spec = P(S.BATCH_AXES)
  locked = tuple(config.model.lock_towers)
  # a teacher loss replaces the sharded contrastive loss (and is dense, on global arrays)
  teacher_loss = build_teacher_loss(config.loss) if teacher is not None else None
  loss_fn = build_loss(config.loss) if teacher is None else None

  def global_loss(image_emb, text_emb, scale, bias):
    return loss_fn(image_emb, text_emb, scale, bias, S.BATCH_AXES)

  sharded_loss = jax.shard_map(global_loss, mesh=mesh,
                               in_specs=(batch_spec, batch_spec, P(), P()),
                               out_specs=(P(), P()))

  def merged(params):
    if locked:
      params = {k: jax.lax.stop_gradient(v) if k in locked else v for k, v in params.items()}
    return nnx.merge(graphdef, params)

  def dropout_rng(keys):
    return None if keys is None else jax.random.wrap_key_data(keys)

  def embed(params, images, text, keys=None):
    model = merged(params)
    images = normalize_images(images, config.data.normalization)
    return (model.encode_image(images, dropout_rng=dropout_rng(keys)),
            model.encode_text(text))

  def logit_params(params):
    out = nnx.merge(graphdef, params).logit_params()
    return out["logit_scale"], out.get("logit_bias", jnp.zeros((), jnp.float32))

  def teacher_embeddings(teacher_params, batch):
    model = nnx.merge(teacher.graphdef, teacher_params)
    images = batch["image"].astype(jnp.float32) / 255.0
    images = (images - jnp.asarray(teacher.mean)) / jnp.asarray(teacher.std)
    if images.shape[1] != teacher.image_size:
      b, _, _, c = images.shape
      images = jax.image.resize(images, (b, teacher.image_size, teacher.image_size, c), "bicubic")
    out = (model.encode_image(images), model.encode_text(batch["text"]),
           model.logit_params()["logit_scale"])
    return jax.lax.stop_gradient(out)

  def objective(params, batch, teacher_params=None):
    if teacher is not None:
      image_emb, text_emb = embed(params, batch["image"], batch["text"], batch.get("keys"))
      return teacher_loss(image_emb, text_emb, logit_params(params)[0],
                          *teacher_embeddings(teacher_params, batch))
    if config.model.name != "coca":
      image_emb, text_emb = embed(params, batch["image"], batch["text"], batch.get("keys"))
      return sharded_loss(image_emb, text_emb, *logit_params(params))
    model = merged(params)
    images = normalize_images(batch["image"], config.data.normalization)
    image_emb, image_tokens = model.image_features(images,
                                                   dropout_rng=dropout_rng(batch.get("keys")))
    text_emb, logits, labels = model.caption_logits(batch["text"], image_tokens)
    contrastive, metrics = sharded_loss(image_emb, text_emb, *logit_params(params))
    caption = caption_loss(logits, labels, pad_id=model.pad_id)
    total = contrastive + config.model.caption_weight * caption
    return total, {**metrics, "contrastive_loss": contrastive, "caption_loss": caption}

  k = config.accumulation_steps
  n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]

  def value_and_grad(params, batch, teacher_params=None):
    if k == 1:
      return jax.value_and_grad(objective, has_aux=True)(params, batch, teacher_params)
    extra = (batch["keys"],) if "keys" in batch else ()
    return accumulated_value_and_grad(embed, logit_params, sharded_loss, params, batch["image"],
                                      batch["text"], *extra, k=k, n=n_batch_shards)

  return value_and_grad, logit_params


def make_train_step(setup: Setup, teacher: Teacher | None = None):
  """The jitted step: forward, global loss (shard_map), backward, AdamW, temperature clamp.

  With a ``teacher`` (teacher losses) its parameters are an extra, non-donated argument, bound
  here, so the returned callable is ``step(state, batch)`` either way.
  """
  config, mesh, graphdef, tx = setup.config, setup.mesh, setup.graphdef, setup.tx
  schedule = learning_rate_schedule(config)
  value_and_grad, logit_params = make_value_and_grad(setup, teacher)

  patch_dropout = float(config.model.image.get("patch_dropout", 0.0) or 0.0)
  metrics_cls = (CocaTrainMetrics if config.model.name == "coca" else
                 DistillTrainMetrics if config.loss.name == "distill" else TrainMetrics)
  extra_keys = ("contrastive_loss", "caption_loss", "distill_loss")
  poisoned = tuple(int(x) for x in config.debug_nonfinite_steps)

  def step(state: TrainState, batch: dict[str, jax.Array], teacher_params=None):
    if patch_dropout > 0:  # per-example keys, split with the batch (also across micro-batches)
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      keys = jax.random.key_data(jax.random.split(key, batch["image"].shape[0]))
      batch = {**batch, "keys": jax.lax.with_sharding_constraint(keys, S.batch_sharding(mesh, 2))}
    (loss, metrics), grads = value_and_grad(state.params, batch, teacher_params)
    if poisoned:  # testing aid (config.debug_nonfinite_steps): a NaN batch's gradient
      hit = jnp.isin(state.step + 1, jnp.asarray(poisoned))
      grads = jax.tree.map(lambda g: jnp.where(hit, jnp.nan, g), grads)
    scale = logit_params(state.params)[0]
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model = nnx.merge(graphdef, params)
    model.apply_constraints()
    # a non-finite step changes nothing but the step counter (the data stream moves on)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = state.replace(step=state.step + 1,
                              params=keep(pure_params(model), state.params),
                              opt_state=keep(opt_state, state.opt_state))
    extra = {k: metrics[k] for k in extra_keys if k in metrics}
    step_metrics = metrics_cls.single_from_model_output(
        loss=loss, i2t_acc=metrics["i2t_acc"], t2i_acc=metrics["t2i_acc"], **extra,
        grad_norm=grad_norm, logit_scale=scale, learning_rate=schedule(state.step),
        skipped_nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, step_metrics

  batch_sh = {"image": S.batch_sharding(mesh, 4), "text": S.batch_sharding(mesh, 2)}
  if teacher is None:
    return jax.jit(step, in_shardings=(setup.state_shardings, batch_sh),
                   out_shardings=(setup.state_shardings, S.replicated(mesh)), donate_argnums=0)
  jitted = jax.jit(step, in_shardings=(setup.state_shardings, batch_sh, teacher.shardings),
                   out_shardings=(setup.state_shardings, S.replicated(mesh)), donate_argnums=0)
  return lambda state, batch: jitted(state, batch, teacher.params)


def eval_context(setup: Setup) -> EvalContext:
  """What the evaluation suite needs of this run: model, mesh, tokenizer, preprocessing."""
  config = setup.config
  return EvalContext(
      graphdef=setup.graphdef, mesh=setup.mesh, param_shardings=setup.state_shardings.params,
      tokenizer=setup.tokenizer, normalization=config.data.normalization,
      image_size=config.data.image_size, interpolation=config.data.get("interpolation", "bicubic"),
      batch_size=config.eval.batch_size, seed=config.seed,
      data_dir=config.data.get("tfds_data_dir", None), model_name=config.model.name)


class Evaluator:
  """The configured evaluation suite (``vlpt.evaluation``) run under this run's mesh and rules."""

  def __init__(self, setup: Setup):
    self.setup = setup
    with S.activate(setup.mesh, setup.rules):
      try:
        self.suite = SuiteEvaluator(setup.config, eval_context(setup))
      except ValueError as e:
        raise ConfigError(str(e)) from None

  def due(self, step: int) -> bool:
    return self.suite.due(step)

  def __call__(self, params: Any, step: int | None = None) -> dict[str, float]:
    with S.activate(self.setup.mesh, self.setup.rules):
      return self.suite(params, step)


def make_loader(setup: Setup, start_batch: int = 0) -> DeviceLoader:
  config = setup.config

  def make_iterator():
    # SkipCounter: file-backed sources' replaced examples, by reason (this process), kept in the
    # iterator state; DeviceLoader.skipped reports them as of the last consumed batch
    from vlpt.data.pipeline import SkipCounter
    ds = train_dataset(config.data, tokenizer=setup.tokenizer, global_batch=config.batch_size,
                       seed=config.seed, process_index=jax.process_index(),
                       process_count=jax.process_count(), start_batch=start_batch)
    return SkipCounter(iter(ds))

  return DeviceLoader(make_iterator, setup.mesh, jax.process_count())


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                    ) -> tuple[Setup, TrainState]:
  """Builds ``config`` and restores ``step`` (default: the latest) of ``workdir`` onto its mesh."""
  setup = build(config)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, async_save=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}; train first")
    state, _ = checkpointer.restore(step, setup.abstract_state, None)
  finally:
    checkpointer.close()
  return setup, state


def _fmt(results: dict[str, float]) -> str:
  return " ".join(f"{k}={v:.4f}" for k, v in sorted(results.items()) if v == v)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


# Keys that change how a run is watched or fed, never what it computes: free to change on resume.
OPERATIONAL_KEYS = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "async_checkpointing", "host_device_count", "eval.",
                    "max_consecutive_nonfinite", "debug_",
                    "data.num_workers", "data.read_threads", "data.prefetch")


def config_differences(old: dict, new: dict) -> list[str]:
  """``key: old -> new`` for every leaf that differs, operational keys aside."""
  a, b = _flatten(old), _flatten(new)
  keys = [k for k in sorted(set(a) | set(b)) if not k.startswith(OPERATIONAL_KEYS)]
  return [f"config.{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_config_unchanged(config: ml_collections.ConfigDict, workdir: str, *,
                           allow_change: bool = False) -> None:
  """Refuses to resume checkpoints written under another config (unless ``allow_change``)."""
  import json
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  diffs = config_differences(old, json.loads(config.to_json_best_effort()))
  if diffs and not allow_change:
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise ConfigError(f"{workdir} holds checkpoints of a run with a different config ({shown}); "
                      "use a new --workdir, or pass --allow_config_change to resume anyway")
  if diffs and jax.process_index() == 0:
    print(f"[vlpt] resuming with a changed config (allowed): {'; '.join(diffs)}", flush=True)


def write_run_record(config: ml_collections.ConfigDict, workdir: str, setup: Setup) -> None:
  """The resolved config (what ``vlpt.load`` reads back) and the run's environment: package
  versions, devices and mesh, in ``vlpt_run.json``. Written atomically."""
  import importlib.metadata
  import json
  import platform

  def atomic(name: str, text: str) -> None:
    tmp = os.path.join(workdir, name + ".tmp")
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, os.path.join(workdir, name))

  atomic(WORKDIR_CONFIG, config.to_json_best_effort(indent=2))
  versions = {}
  for pkg in ("vlpt", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "ml_collections", "clu", "numpy"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  record = {"python": platform.python_version(), "packages": versions,
            "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "mesh": dict(setup.mesh.shape), "model_config": setup.model_config,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  atomic("vlpt_run.json", json.dumps(record, indent=2, default=str))


def train(config: ml_collections.ConfigDict, workdir: str, *,
          allow_config_change: bool = False) -> dict[str, float]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint); returns the final eval results."""
  setup = build(config)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              async_save=config.async_checkpointing)
  if checkpointer.latest_step() is not None:
    check_config_unchanged(config, workdir, allow_change=allow_config_change)
  if jax.process_index() == 0:
    write_run_record(config, workdir, setup)
  latest = checkpointer.latest_step()
  if latest is not None and latest >= config.total_steps:  # a finished run: nothing to restore,
    checkpointer.close()  # read or compile
    if jax.process_index() == 0:
      print(f"[vlpt] {workdir} already holds the final step {latest} of "
            f"config.total_steps={config.total_steps}: nothing to train (raise total_steps to "
            "train on, or use another workdir); returning its recorded final evaluation",
            flush=True)
    return recorded_results(workdir, latest)
  loader = make_loader(setup)
  if latest is None:
    state = initial_state(setup)
  else:
    state, data_restored = checkpointer.restore(latest, setup.abstract_state, loader)
    if not data_restored:
      loader.close()
      loader = make_loader(setup, start_batch=latest)
    if jax.process_index() == 0:
      print(f"[vlpt] resumed from {checkpointer.directory}/{latest}", flush=True)
  first_step = int(state.step)
  train_step = make_train_step(setup, load_teacher(setup))
  evaluator = Evaluator(setup) if config.eval.datasets else None
  writer = MetricWriter(workdir)
  progress = Progress(config.total_steps, config.batch_size, first_step)
  accumulated = None
  results: dict[str, float] = {}
  start_time = time.perf_counter()
  if jax.process_index() == 0:
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    print(f"[vlpt] {n_params / 1e6:.2f}M parameters, mesh {dict(setup.mesh.shape)}, "
          f"{jax.process_count()} process(es), global batch {config.batch_size}", flush=True)
  preemption = PreemptionWatch()
  nonfinite = NonFiniteWatch(config.max_consecutive_nonfinite)
  try:
    with S.activate(setup.mesh, setup.rules):
      for step in range(first_step + 1, config.total_steps + 1):
        batch = next(loader)
        state, step_metrics = train_step(state, batch)
        nonfinite.observe(step, step_metrics)
        accumulated = step_metrics if accumulated is None else accumulated.merge(step_metrics)
        if step % config.log_every_steps == 0 or step == config.total_steps:
          values = {f"train/{k}": float(v) for k, v in accumulated.compute().items()}
          values["train/skipped_nonfinite"] = float(nonfinite.take_interval_count())
          accumulated = None
          values["train/examples_per_s"] = progress.update(step, values)
          values.update({f"data/skipped_{k}": v for k, v in getattr(loader, "skipped", {}).items()})
          writer.write(step, values)
        if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
          checkpointer.save(step, state, loader, force=True)
        is_last = step == config.total_steps and config.eval.at_end
        if evaluator is not None and (is_last or evaluator.due(step)):
          start = time.perf_counter()
          results = evaluator(state.params, None if is_last else step)
          writer.write(step, results)
          if jax.process_index() == 0:
            print(f"[vlpt] eval @ {step} ({time.perf_counter() - start:.1f}s): {_fmt(results)}",
                  flush=True)
        if step < config.total_steps and preemption.agreed_to_stop(step):
          if step % config.checkpoint_every_steps:  # (else this step was just saved)
            checkpointer.save(step, state, loader, force=True)
          checkpointer.wait()
          if jax.process_index() == 0:
            print(f"[vlpt] SIGTERM: checkpointed step {step} in {checkpointer.directory}; "
                  "exiting (restart to resume)", flush=True)
          return results
  finally:
    preemption.restore()
    checkpointer.close()
    loader.close()
    writer.close()
  if jax.process_index() == 0:
    _print_summary(config.total_steps - first_step, time.perf_counter() - start_time, results)
  return results


def recorded_results(workdir: str, step: int) -> dict[str, float]:
  """The evaluation results ``metrics.jsonl`` holds for ``step`` (training/data rows left out)."""
  path = os.path.join(workdir, "metrics.jsonl")
  results: dict[str, float] = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        if row.get("step") == step:
          results.update({k: v for k, v in row.items()
                          if k != "step" and not k.startswith(("train/", "data/"))})
  return results


class PreemptionWatch:
  """SIGTERM (preemption, time limits, ``launch/local.py`` forwarding) -> a clean stop.

  The handler only sets a flag; every step the processes agree (an all-gather of the flags) so
  all of them checkpoint the same step and exit 0 together.
  """

  def __init__(self):
    import signal
    self.requested = False
    self._tpu = jax.devices()[0].platform == "tpu" and jax.process_count() > 1
    self._signal = signal
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def agreed_to_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    if bool(np.any(flags)):
      return True
    # TPU maintenance events reach JAX's preemption notifier, which answers at a step all
    # processes agree on (not simulated here: CPU and GPU runs rely on SIGTERM alone)
    return self._tpu and multihost_utils.reached_preemption_sync_point(step)

  def restore(self) -> None:
    self._signal.signal(self._signal.SIGTERM, self._previous)


class NonFiniteWatch:
  """Counts skipped (non-finite) steps; too many in a row stop the run with an error.

  Each step's flag is read one step late, so the host never waits for the step it just queued.
  """

  def __init__(self, limit: int):
    self.limit, self.streak, self.interval = limit, 0, 0
    self._pending = None

  def _settle(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    if float(metrics.skipped_nonfinite.total) > 0:
      self.streak += 1
      self.interval += 1
      if self.streak >= self.limit:
        raise TrainingError(
            f"{self.streak} consecutive training steps had a non-finite loss or gradient "
            f"(the last at step {step}); their updates were skipped and the run stops here. The "
            "last checkpoint is intact: lower the learning rate or inspect the data, then resume "
            "(config.max_consecutive_nonfinite sets the limit)")
    else:
      self.streak = 0

  def observe(self, step: int, metrics: Any) -> None:
    self._settle()
    self._pending = (step, metrics)

  def take_interval_count(self) -> int:
    self._settle()
    count, self.interval = self.interval, 0
    return count


def _print_summary(steps: int, seconds: float, results: dict[str, float]) -> None:
  lines = [f"[vlpt] done: {steps} steps in {seconds:.0f}s"]
  for key in sorted(results):
    if key.endswith(("zeroshot/top1", "zeroshot/top5", "retrieval/t2i_r5", "retrieval/i2t_r5")):
      lines.append(f"[vlpt]   {key:<40s} {results[key]:.4f}")
  print("\n".join(lines), flush=True)
