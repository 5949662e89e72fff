"""Everything a run builds from its config before any step: mesh, model structure, optimizer,
and where every array of the train state lives.

Models name logical axes and losses name batch axes; :func:`build` makes the mesh and binds both
to the devices (the loader, evaluators and checkpoints then use the mesh it made).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from vlpt import sharding as S
from vlpt.models import build_model
from vlpt.optim import build_optimizer
from vlpt.train import ema
from vlpt.train.initialization import check_checkpoint_fits, pretrained_params
from vlpt.train.state import TrainState, pure_params
from vlpt.train.validation import validate


@dataclasses.dataclass
class Setup:
  """A run's static structure: built once, shared by the step, the evaluators and restores."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: S.LogicalRules
  tokenizer: Any
  model_config: dict  # the model's constructor arguments (vlpt.models.model_kwargs)
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  abstract_state: TrainState  # ShapeDtypeStructs carrying their target shardings
  state_shardings: TrainState
  init_fn: Any  # raw seed key data -> a fresh TrainState (jitted by initial_state)

  @property
  def batch_shards(self) -> int:
    """How many ways a global batch is split (the mesh's data x fsdp axes)."""
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  @property
  def image_patch(self) -> int:
    """The image tower's patch size (NaFlex batches are patchified on the host)."""
    from vlpt.models.sizes import parse_vit

    return parse_vit(self.config.model.image.variant)[1]

  @property
  def examples_per_step(self) -> float:
    """``config.batch_size``, or with NaFlex training the mean of the per-length batches."""
    if naflex_training(self.config):
      from vlpt.data.naflex import mean_batch

      nf = self.config.data.train.naflex
      return mean_batch(int(nf.token_budget), tuple(nf.lengths), self.batch_shards)
    return float(self.config.batch_size)


def naflex_training(config: ml_collections.ConfigDict) -> bool:
  """Whether the run trains on token-budget NaFlex batches (``config.data.train.naflex``)."""
  naflex = config.data.train.get("naflex")
  return bool(naflex is not None and naflex.lengths)


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Setup:
  """Validates ``config`` (a ConfigError before anything compiles), then builds the structure.

  ``devices``: the mesh's devices instead of ``jax.devices()``, e.g. a TPU topology's compile-only
  devices (``vlpt-plan``); processes are then counted from their ``process_index``.
  """
  if devices is None:
    num_devices, num_processes = jax.device_count(), jax.process_count()
  else:
    num_devices, num_processes = len(devices), len({d.process_index for d in devices})
  checked = validate(config, num_devices=num_devices, num_processes=num_processes)
  mesh = S.make_mesh(dict(config.mesh), devices)
  rules = S.rules_from_config(config.sharding_rules)
  model_config = checked.model_kwargs

  def make_model(key):
    return build_model(model_config, nnx.Rngs(params=key))

  abstract_model = nnx.eval_shape(lambda: make_model(jax.random.key(0)))
  graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError("models with non-parameter state are not supported by the trainer")
  abstract_params = abstract_params.to_pure_dict()
  tx = build_optimizer(config, abstract_params)
  with_ema = ema.enabled(config)

  def init_fn(seed_key_data):
    key = jax.random.wrap_key_data(seed_key_data)
    init_key, train_key = jax.random.split(key)
    params = pure_params(make_model(init_key))
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.key_data(train_key),
      ema=ema.init(params) if with_ema else None,
    )

  param_sh = S.param_shardings(nnx.state(abstract_model, nnx.Param), mesh, rules).to_pure_dict()
  repl = S.replicated(mesh)
  abstract = jax.eval_shape(init_fn, seed_key_data(config))
  opt_sh = _optimizer_state_shardings(tx, abstract.opt_state, param_sh, abstract_params, repl)
  shardings = TrainState(
    step=repl, params=param_sh, opt_state=opt_sh, rng=repl, ema=param_sh if with_ema else None
  )
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return Setup(
    config=config,
    mesh=mesh,
    rules=rules,
    tokenizer=checked.tokenizer,
    model_config=model_config,
    graphdef=graphdef,
    tx=tx,
    abstract_state=abstract,
    state_shardings=shardings,
    init_fn=init_fn,
  )


def _optimizer_state_shardings(tx, opt_state, param_shardings, params, replicated) -> Any:
  """Moments take their parameter's sharding; frozen parameters (``optax.MaskedNode``) have no
  state; statistics not shaped like their parameter (Adafactor's factored rows and columns) and
  non-parameter leaves (counts) are replicated."""

  def leaf_sharding(state, sharding, param):
    if isinstance(state, optax.MaskedNode):
      return state
    return sharding if tuple(state.shape) == tuple(param.shape) else replicated

  return optax.tree_map_params(
    tx,
    leaf_sharding,
    opt_state,
    param_shardings,
    params,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )


def seed_key_data(config: ml_collections.ConfigDict) -> jax.Array:
  return jax.random.key_data(jax.random.key(config.seed))


def initial_state(setup: Setup) -> TrainState:
  """Fresh parameters and optimizer state; ``config.init.checkpoint`` replaces the parameters
  (checked to fit before anything compiles); the EMA, if any, starts as the final parameters."""
  if setup.config.init.checkpoint:
    check_checkpoint_fits(setup)
  with S.activate(setup.mesh, setup.rules):
    state = jax.jit(setup.init_fn, out_shardings=setup.state_shardings)(seed_key_data(setup.config))
  if setup.config.init.checkpoint:
    state = state.replace(params=pretrained_params(setup, state.params))
    if state.ema is not None:
      state = state.replace(ema=ema_from_params(setup, state.params))
  return state


def ema_from_params(setup: Setup, params: Any) -> Any:
  """A fresh EMA (float32 copies of ``params``) placed with the parameters' shardings."""
  return jax.jit(ema.init, out_shardings=setup.state_shardings.ema)(params)
