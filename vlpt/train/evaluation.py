"""A run's evaluation suite, and :func:`evaluate`: a workdir's checkpoint (or pretrained weights)
evaluated on ``config.eval.datasets`` (``vlpt-eval``, notebooks)."""

from __future__ import annotations

from typing import Any

import ml_collections

from vlpt.errors import ConfigError
from vlpt.evaluation.suite import EvalContext, EvalSuite
from vlpt.train import ema
from vlpt.train.checkpointing import Checkpointer
from vlpt.train.initialization import resolve_architecture
from vlpt.train.setup import Setup, build, initial_state
from vlpt.train.writers import MetricWriter


def eval_suite(setup: Setup) -> EvalSuite:
  """The configured suite over this run's model, mesh, tokenizer and preprocessing."""
  config = setup.config
  ctx = EvalContext(
    graphdef=setup.graphdef,
    mesh=setup.mesh,
    rules=setup.rules,
    param_shardings=setup.state_shardings.params,
    tokenizer=setup.tokenizer,
    normalization=config.data.normalization,
    image_size=config.data.image_size,
    interpolation=config.data.interpolation,
    batch_size=config.eval.batch_size,
    seed=config.seed,
    data_dir=config.data.tfds_data_dir,
  )
  try:
    return EvalSuite(config, ctx)
  except ValueError as e:  # a dataset that cannot serve its tasks (no labels, no captions, ...)
    raise ConfigError(str(e)) from None


def restore(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[Setup, Any]:
  """Builds ``config`` and restores ``step`` (default: the latest) of ``workdir`` onto its mesh
  (parameters, optimizer state and step; not the data position)."""
  setup = build(config)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, async_save=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}; train first")
    state = checkpointer.restore(step, setup.abstract_state, None)
  finally:
    checkpointer.close()
  return setup, state


def evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None
) -> dict[str, float]:
  """Evaluates ``workdir``'s checkpoint (the latest, or ``step``) on ``config.eval.datasets``.

  With no checkpoint in ``workdir`` and ``config.init.checkpoint`` set, the pretrained weights
  themselves are evaluated (at step 0): a converted open_clip / HF / big_vision model runs the
  same evaluators. Results are appended to ``workdir/metrics.jsonl`` at the evaluated step and
  returned, keyed ``NAME/TASK/METRIC``. With ``config.ema.decay > 0`` the EMA weights are
  evaluated (as the training loop does; a checkpoint saved without them: its parameters), under
  the same keys; ``--config.ema.decay=0`` evaluates the raw parameters.
  """
  if not config.eval.datasets:
    raise ConfigError("config.eval.datasets is empty: nothing to evaluate")
  checkpointer = Checkpointer(workdir, keep=1, async_save=False)
  has_checkpoint = checkpointer.latest_step() is not None
  checkpointer.close()
  if not has_checkpoint and step is None and config.init.checkpoint:
    setup = build(resolve_architecture(config))
    state = initial_state(setup)
  else:
    try:
      setup, state = restore(config, workdir, step)
    except FileNotFoundError as e:
      raise ConfigError(
        f"{e} with vlpt-train, or set config.init.checkpoint to evaluate pretrained weights"
      ) from None
  results = eval_suite(setup)(ema.weights(state))
  writer = MetricWriter(workdir)  # metrics.jsonl and TensorBoard, beside the training curves
  writer.write(int(state.step), results)
  writer.close()
  return results
