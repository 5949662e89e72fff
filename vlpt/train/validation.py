"""The one boundary between a config and the work it asks for.

Every owner checks its own section and raises its own error (the config layer its structure, the
data pipeline its sources and files, the tokenizers theirs, the models their constructor
arguments, the losses, the objective, the initialization, the optimizer, the EMA, the evaluation
suite); :func:`validate` runs them all, in that order, and turns whichever fails first into one
:class:`~vlpt.errors.ConfigError` line. Nothing is compiled or read in bulk before it passes.
The run's own rules (the mesh against the devices, batches against the mesh and processes) are
checked here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlpt import config as config_schema
from vlpt import losses, models, optim
from vlpt.data import pipeline
from vlpt.data.tokenizers import build_tokenizer
from vlpt.errors import ConfigError
from vlpt.evaluation import suite
from vlpt.sharding import MESH_AXES, MESH_OPTIONS, resolve_mesh_shape
from vlpt.train import ema, initialization
from vlpt.train.objectives import objective_class


@dataclasses.dataclass(frozen=True)
class Validated:
  """What validation resolved on the way, so a run does not resolve it again."""

  mesh_shape: tuple[int, ...]  # (data, fsdp, tensor)
  tokenizer: Any
  model_kwargs: dict  # the model's constructor arguments (vlpt.models.model_kwargs)


def validate(config: Any, *, num_devices: int, num_processes: int = 1) -> Validated:
  """Checks ``config`` against every owner and the devices; ConfigError names the first problem."""
  try:
    return _validate(config, num_devices, num_processes)
  except ConfigError:
    raise
  except ValueError as e:  # an owner's check (WeightsError and DataError included)
    raise ConfigError(str(e)) from None


def _validate(config: Any, num_devices: int, num_processes: int) -> Validated:
  config_schema.check_structure(config)
  mesh_shape = _check_mesh_and_batches(config, num_devices, num_processes)
  pipeline.check_config(config.data)
  try:
    tokenizer = build_tokenizer(config.data.tokenizer)
  except (OSError, RuntimeError) as e:  # a tokenizer file its library cannot read
    raise ValueError(f"config.data.tokenizer ({config.data.tokenizer.name}): {e}") from None
  kwargs = models.model_kwargs(
    config.model,
    image_size=config.data.image_size,
    vocab_size=tokenizer.vocab_size,
    context_length=tokenizer.context_length,
  )
  models.check_config(kwargs)
  losses.check_config(config.loss)
  objective_class(config).check_config(config)
  initialization.check_config(config)
  optim.check_config(config.optimizer)
  ema.check_config(config)
  suite.check_config(
    config.eval,
    model_name=config.model.name,
    image_size=config.data.image_size,
    naflex=bool(config.model.image.get("naflex", False)),
  )
  return Validated(mesh_shape, tokenizer, kwargs)


def _check_mesh_and_batches(config: Any, num_devices: int, num_processes: int) -> tuple[int, ...]:
  unknown_axes = set(config.mesh.keys()) - set(MESH_AXES) - set(MESH_OPTIONS)
  if unknown_axes:
    raise ValueError(
      f"config.mesh has unknown axes {sorted(unknown_axes)}; use {MESH_AXES} (and {MESH_OPTIONS})"
    )
  try:
    mesh_shape = resolve_mesh_shape(dict(config.mesh), num_devices)
  except ValueError as e:
    raise ValueError(f"{e} (config.mesh = {dict(config.mesh)})") from None
  dp = mesh_shape[0] * mesh_shape[1]
  if dp % num_processes:  # each process feeds its own rows: it must hold whole batch shards
    raise ValueError(
      f"the mesh's data x fsdp = {mesh_shape[0]} x {mesh_shape[1]} = {dp} batch shards do not split "
      f"over {num_processes} processes (each feeds its own rows); make data x fsdp a multiple of "
      f"{num_processes} (config.mesh = {dict(config.mesh)})"
    )
  for key, value in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
    if value % dp:
      raise ValueError(
        f"config.{key}={value} is not divisible by the data-parallel size {dp} "
        f"(mesh data x fsdp = {mesh_shape[0]} x {mesh_shape[1]}); use a multiple of {dp}"
      )
    if value % num_processes:
      raise ValueError(f"config.{key}={value} is not divisible by {num_processes} processes")
  k = config.accumulation_steps
  if config.batch_size % (dp * k):
    raise ValueError(
      f"config.batch_size={config.batch_size} must split into {k} micro-batches on each of "
      f"{dp} data-parallel shards; use a multiple of {dp * k}"
    )
  _check_ring_tiles(config.loss, config.batch_size // dp, dp)
  _check_naflex_training(config, dp)
  return mesh_shape


def _check_naflex_training(config: Any, dp: int) -> None:
  """NaFlex token-budget training: what it needs of the model, the step and the budget."""
  nf = config.data.train.get("naflex")
  if nf is None or not nf.lengths:
    return
  if not config.model.image.get("naflex", False):
    raise ValueError(
      "config.data.train.naflex.lengths trains on NaFlex batches: set config.model.image.naflex=True"
    )
  if config.model.name != "clip" or config.teacher.get("checkpoint") or config.accumulation_steps > 1:
    raise ValueError(
      "NaFlex training runs the contrastive objective in one step: a 'clip' model, no teacher, "
      "config.accumulation_steps=1"
    )
  if float(config.model.image.get("patch_dropout", 0.0) or 0.0) > 0:
    raise ValueError("NaFlex training does not take config.model.image.patch_dropout (its batches pad)")
  if config.loss.get("impl") == "ring":
    raise ValueError("NaFlex training's batch size changes per step: use config.loss.impl='gather'")
  lengths = [int(n) for n in nf.lengths]
  for n in lengths:
    if int(nf.token_budget) // n < dp:
      raise ValueError(
        f"config.data.train.naflex.token_budget={nf.token_budget} gives fewer than {dp} examples "
        f"(one per batch shard) at sequence length {n}; raise it to at least {dp * n}"
      )


def _check_ring_tiles(loss: Any, per_device: int, dp: int) -> None:
  """The ring loss's tile must divide each device's rows (else it fails only while compiling)."""
  if loss.get("impl") != "ring":
    return
  tile = min(int(loss.tile_size), per_device)
  if tile <= 0 or per_device % tile:
    raise ValueError(
      f"config.loss.tile_size={loss.tile_size} does not divide the per-device batch {per_device} "
      f"(config.batch_size over data x fsdp = {dp} batch shards); choose a divisor of {per_device}"
    )
