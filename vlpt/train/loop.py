"""``train(config, workdir)``: the training loop, top to bottom.

Build the run (:mod:`vlpt.train.setup`), resume or initialize its state, then step: one batch,
one jitted update (:mod:`vlpt.train.step`), and on their cadences a log line, a checkpoint and an
evaluation. A SIGTERM checkpoints the current step and returns; repeated non-finite steps stop
the run with an error (:mod:`vlpt.train.watches`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from vlpt import sharding as S
from vlpt.data.loader import DeviceLoader
from vlpt.data.pipeline import SkipCounter, check_vocabulary, train_dataset
from vlpt.errors import ConfigError
from vlpt.train.checkpointing import Checkpointer
from vlpt.train.evaluation import eval_suite
from vlpt.train.objectives import objective_class
from vlpt.train.records import check_config_unchanged, recorded_results, write_run_record
from vlpt.train.setup import Setup, build, initial_state
from vlpt.train.step import make_train_step
from vlpt.train.watches import NonFiniteWatch, PreemptionWatch
from vlpt.train.writers import MetricWriter, Progress


def make_loader(setup: Setup, start_batch: int = 0) -> DeviceLoader:
  """This process's share of the training stream from global batch ``start_batch`` on, as global
  device arrays; file sources' replaced examples are counted (``loader.skipped``)."""
  config = setup.config

  def make_iterator():
    ds = train_dataset(
      config.data,
      tokenizer=setup.tokenizer,
      global_batch=config.batch_size,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_batch=start_batch,
    )
    return SkipCounter(iter(ds))

  return DeviceLoader(make_iterator, setup.mesh, jax.process_count())


def train(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, float]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint); returns the final eval results."""
  setup = build(config)
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(
    workdir, keep=config.keep_checkpoints, async_save=config.async_checkpointing
  )
  latest = checkpointer.latest_step()
  if latest is not None:
    check_config_unchanged(config, workdir, allow_change=allow_config_change)
  if is_chief:
    write_run_record(config, workdir, setup)
  if latest is not None and latest >= config.total_steps:  # a finished run: nothing to restore,
    checkpointer.close()  # read or compile
    _say(
      f"{workdir} already holds the final step {latest} of config.total_steps="
      f"{config.total_steps}: nothing to train (raise total_steps to train on, or use another "
      "workdir); returning its recorded final evaluation"
    )
    return recorded_results(workdir, latest)

  try:  # a tokenizer that does not know the captions' words: refused before anything compiles
    check_vocabulary(config.data, setup.tokenizer)
  except ValueError as e:
    checkpointer.close()
    raise ConfigError(str(e)) from None

  # The state, and the data stream where it left off: the iterator's saved position when this
  # topology saved one, else the stream restarted at the restored step (it is deterministic).
  data_restorable = latest is not None and checkpointer.has_data_state(latest)
  start_batch = latest if latest is not None and not data_restorable else 0
  loader = make_loader(setup, start_batch=start_batch)
  if latest is None:
    state = initial_state(setup)
  else:
    state = checkpointer.restore(latest, setup.abstract_state, loader if data_restorable else None)
    _say(
      f"resumed from {checkpointer.directory}/{latest}"
      + (
        "" if data_restorable else " (data position from the step: saved by another number of processes)"
      )
    )
  first_step = int(state.step)

  objective = objective_class(config)(setup)
  train_step = make_train_step(setup, objective)
  evaluator = eval_suite(setup) if config.eval.datasets else None
  writer = MetricWriter(workdir, resume_step=first_step)
  progress = Progress(config.total_steps, config.batch_size, first_step)
  preemption = PreemptionWatch()
  nonfinite = NonFiniteWatch(config.max_consecutive_nonfinite)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  _say(
    f"{n_params / 1e6:.2f}M parameters, mesh {dict(setup.mesh.shape)}, "
    f"{jax.process_count()} process(es), global batch {config.batch_size}"
  )

  interval_metrics = None
  results: dict[str, float] = {}
  start_time = time.perf_counter()
  try:
    with S.activate(setup.mesh, setup.rules):
      for step in range(first_step + 1, config.total_steps + 1):
        is_last = step == config.total_steps
        state, step_metrics = train_step(state, next(loader))
        if step == first_step + 1:  # once: rates and ETA are timed from here (not compilation)
          jax.block_until_ready(step_metrics)
          progress.started(step)
        nonfinite.observe(step, step_metrics)
        interval_metrics = (
          step_metrics if interval_metrics is None else interval_metrics.merge(step_metrics)
        )

        if step % config.log_every_steps == 0 or is_last:
          values = {f"train/{k}": float(v) for k, v in interval_metrics.compute().items()}
          values["train/skipped_nonfinite"] = float(nonfinite.take_interval_count())
          values["train/examples_per_s"] = progress.update(step, values)
          values.update({f"data/skipped_{k}": v for k, v in loader.skipped.items()})
          writer.write(step, values)
          interval_metrics = None

        if step % config.checkpoint_every_steps == 0 or is_last:
          checkpointer.save(step, state, loader, force=True)

        if evaluator is not None and ((is_last and config.eval.at_end) or evaluator.due(step)):
          results = _evaluate(
            evaluator, state, step, final=is_last and config.eval.at_end, writer=writer
          )

        if not is_last and preemption.agreed_to_stop(step):
          if step % config.checkpoint_every_steps:  # (else this step was just saved)
            checkpointer.save(step, state, loader, force=True)
          checkpointer.wait()
          _say(
            f"{preemption.reason}: checkpointed step {step} in {checkpointer.directory}; exiting "
            "(restart to resume)"
          )
          return results
  finally:
    preemption.restore()
    checkpointer.close()
    loader.close()
    writer.close()
  _print_summary(config.total_steps - first_step, time.perf_counter() - start_time, results)
  return results


def _evaluate(
  evaluator: Any, state: Any, step: int, *, final: bool, writer: MetricWriter
) -> dict[str, float]:
  start = time.perf_counter()
  results = evaluator(state.params, None if final else step)
  writer.write(step, results)
  _say(
    f"eval @ {step} ({time.perf_counter() - start:.1f}s): "
    + " ".join(f"{k}={v:.4f}" for k, v in sorted(results.items()) if v == v)
  )
  return results


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[vlpt] {message}", flush=True)


def _print_summary(steps: int, seconds: float, results: dict[str, float]) -> None:
  lines = [f"done: {steps} steps in {seconds:.0f}s"]
  for key in sorted(results):
    if key.endswith(("zeroshot/top1", "zeroshot/top5", "retrieval/t2i_r5", "retrieval/i2t_r5")):
      lines.append(f"  {key:<40s} {results[key]:.4f}")
  _say("\n[vlpt] ".join(lines))
