"""The pure, jitted training step: the objective's value and gradient, one optimizer update,
the model's constraints, and the step's metrics.

After the update, the EMA weights (``config.ema.decay``, :mod:`vlpt.train.ema`) move toward the
new parameters. A step whose loss or gradient is not finite changes nothing but the step counter
(the data stream moves on); the loop's :class:`~vlpt.train.watches.NonFiniteWatch` stops a run that keeps
producing them. The train state is donated: its buffers are reused for the next state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vlpt import sharding as S
from vlpt.data.pipeline import local_crop_settings
from vlpt.data.synthetic import MAX_OBJECTS
from vlpt.optim import learning_rate_schedule
from vlpt.train import ema
from vlpt.train.metrics import train_metrics
from vlpt.train.objectives import Objective
from vlpt.train.setup import Setup, naflex_training
from vlpt.train.state import TrainState, pure_params


def make_train_step(setup: Setup, objective: Objective) -> Callable:
  """``step(state, batch) -> (state, metrics)``, jitted with the state's shardings.

  The objective's extra inputs (a teacher's parameters) are bound here as a non-donated
  argument, so the returned callable has the same signature for every objective.
  """
  config, mesh, graphdef, tx = setup.config, setup.mesh, setup.graphdef, setup.tx
  schedule = learning_rate_schedule(config)
  metrics_cls = train_metrics(tuple(objective.extra_terms))
  patch_dropout = float(config.model.image.get("patch_dropout", 0.0) or 0.0)
  poisoned = tuple(int(x) for x in config.debug_nonfinite_steps)
  update_ema = ema.make_update(config, setup.abstract_state.params) if ema.enabled(config) else None

  def step(state: TrainState, batch: dict[str, jax.Array], aux: Any = None):
    if patch_dropout > 0:  # per-example keys, split with the batch (also across micro-batches)
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      keys = jax.random.key_data(jax.random.split(key, batch["image"].shape[0]))
      batch = {**batch, "keys": jax.lax.with_sharding_constraint(keys, S.batch_sharding(mesh, 2))}
    inputs = objective.step_inputs(state, aux)  # (the EMA teacher of self-distillation)
    (loss, metrics), grads = objective.value_and_grad(state.params, batch, inputs)
    if poisoned:  # testing aid (config.debug_nonfinite_steps): a NaN batch's gradient
      hit = jnp.isin(state.step + 1, jnp.asarray(poisoned))
      grads = jax.tree.map(lambda g: jnp.where(hit, jnp.nan, g), grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    model = nnx.merge(graphdef, optax.apply_updates(state.params, updates))
    model.apply_constraints()

    def keep(new, old):  # a non-finite step keeps the old values
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    params = keep(pure_params(model), state.params)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=keep(opt_state, state.opt_state),
      ema=None if update_ema is None else keep(update_ema(state.ema, params), state.ema),
    )
    step_metrics = metrics_cls.single_from_model_output(
      loss=loss,
      i2t_acc=metrics["i2t_acc"],
      t2i_acc=metrics["t2i_acc"],
      **{term: metrics[term] for term in objective.extra_terms},
      grad_norm=grad_norm,
      logit_scale=objective.logit_params(state.params)[0],
      learning_rate=schedule(schedule_count(state.opt_state, state.step)),
      skipped_nonfinite=1.0 - finite.astype(jnp.float32),
    )
    return new_state, step_metrics

  layout = batch_layout(setup)
  batch_sh = {name: S.batch_sharding(mesh, 1 + len(shape)) for name, (shape, _) in layout.items()}
  aux, aux_shardings = objective.aux_inputs()
  out_shardings = (setup.state_shardings, S.replicated(mesh))
  if aux is None:
    return jax.jit(
      step, in_shardings=(setup.state_shardings, batch_sh), out_shardings=out_shardings, donate_argnums=0
    )
  jitted = jax.jit(
    step,
    in_shardings=(setup.state_shardings, batch_sh, aux_shardings),
    out_shardings=out_shardings,
    donate_argnums=0,
  )
  return lambda state, batch: jitted(state, batch, aux)


def batch_layout(setup: Setup) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Every array of a training batch: its shape after the batch axis and its dtype (the step's
  input shardings and ``vlpt-plan``'s abstract batch both read it). NaFlex batches are shown at
  their longest sequence length."""
  config, length = setup.config, setup.tokenizer.context_length
  size = config.data.image_size
  if naflex_training(config):  # token-budget NaFlex batches (vlpt.data.naflex)
    n, p = max(int(x) for x in config.data.train.naflex.lengths), setup.image_patch
    layout = {
      "pixel_values": ((n, p * p * 3), jnp.float32),
      "pixel_attention_mask": ((n,), jnp.int32),
      "spatial_shapes": ((2,), jnp.int32),
    }
  else:
    layout = {"image": ((size, size, 3), jnp.uint8)}
  layout["text"] = ((length,), jnp.int32)
  if config.data.train.get("boxes", False):  # the objects' boxes ride along (docs/data.md)
    layout["boxes"] = ((MAX_OBJECTS, 4), jnp.float32)
    layout["box_labels"] = ((MAX_OBJECTS,), jnp.int32)
    layout["box_phrases"] = ((MAX_OBJECTS, length), jnp.int32)
  local = local_crop_settings(config)
  if local:  # SigLIP 2's local views (self-distillation; docs/losses.md)
    v, s = local["local_crops"], local["local_size"]
    layout["local_images"] = ((v, s, s, 3), jnp.uint8)
  return layout


def schedule_count(opt_state: Any, step: jax.Array) -> jax.Array:
  """The count optax's learning-rate schedule reads for the next update: the updates applied so
  far, which falls behind ``state.step`` after skipped (non-finite) steps; so the logged rate is
  the applied one. ``step`` when the optimizer keeps no count."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  for path, count in found:
    if getattr(path[-1], "tuple_name", None) == "ScaleByScheduleState":
      return count
  return found[0][1] if found else step
