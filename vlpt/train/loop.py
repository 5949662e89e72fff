"""``train(config, workdir)``: the training loop, top to bottom.

Build the run (:mod:`vlpt.train.setup`), resume or initialize its state, then step: one batch,
one jitted update (:mod:`vlpt.train.step`), and on their cadences a log line, a checkpoint and an
evaluation. A SIGTERM checkpoints the current step and returns; repeated non-finite steps stop
the run with an error (:mod:`vlpt.train.watches`).

Between those cadences the host never waits for the device: a step is queued, its metrics are
folded into an on-device tally (:class:`vlpt.train.metrics.Tally`), and nothing is read back until
a log, checkpoint or evaluation step (``tests/train/test_loop_host.py`` checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from vlpt import sharding as S
from vlpt import storage
from vlpt.data.files import SKIP_REASONS
from vlpt.data.loader import DeviceLoader
from vlpt.data.pipeline import (
  SkipCounter,
  check_vocabulary,
  local_crop_settings,
  naflex_stream,
  train_dataset,
)
from vlpt.errors import ConfigError
from vlpt.train import ema
from vlpt.train.checkpointing import Checkpointer
from vlpt.train.evaluation import eval_suite
from vlpt.train.initialization import resolve_architecture
from vlpt.train.metrics import Tally, train_metrics
from vlpt.train.objectives import objective_class
from vlpt.train.records import check_config_unchanged, recorded_results, write_run_record
from vlpt.train.setup import Setup, build, initial_state, naflex_training
from vlpt.train.step import make_train_step
from vlpt.train.watches import NonFiniteWatch, PreemptionWatch
from vlpt.train.writers import MetricWriter, Progress


def make_loader(setup: Setup, start_batch: int = 0) -> DeviceLoader:
  """This process's share of the training stream from global batch ``start_batch`` on, as global
  device arrays; file sources' replaced examples are counted (``loader.skipped``)."""
  config = setup.config

  def make_iterator():
    if naflex_training(config):
      return SkipCounter(
        naflex_stream(
          config.data,
          tokenizer=setup.tokenizer,
          patch=setup.image_patch,
          seed=config.seed,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
          multiple_of=setup.batch_shards,
          start_step=start_batch,
        )
      )
    ds = train_dataset(
      config.data,
      tokenizer=setup.tokenizer,
      global_batch=config.batch_size,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_batch=start_batch,
      local_crops=local_crop_settings(config),
    )
    return SkipCounter(iter(ds))

  return DeviceLoader(make_iterator, setup.mesh, jax.process_count())


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  loader_factory: Callable[[Setup, int], Any] = make_loader,
) -> dict[str, float]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint); returns the final eval results.

  ``loader_factory(setup, start_batch)``: the input (default :func:`make_loader`); a benchmark
  swaps in a resident batch to time the loop alone.
  """
  try:  # (a missing bucket or a read-only disk: one line, before anything is read or built)
    storage.check_writable(workdir)
  except OSError as e:
    raise ConfigError(f"--workdir: {e}") from None
  config = resolve_architecture(config)  # (config.init.architecture_from_checkpoint)
  setup = build(config)
  is_chief = jax.process_index() == 0
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
  loader = loader_factory(setup, start_batch)
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
  progress = Progress(config.total_steps, setup.examples_per_step, first_step)
  preemption = PreemptionWatch()
  nonfinite = NonFiniteWatch(config.max_consecutive_nonfinite)
  metrics_cls = train_metrics(tuple(objective.extra_terms))
  tally = Tally(metrics_cls, S.replicated(setup.mesh), first_step, config.max_consecutive_nonfinite)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  _say(
    f"{n_params / 1e6:.2f}M parameters, mesh {dict(setup.mesh.shape)}, "
    f"{jax.process_count()} process(es), global batch {config.batch_size}"
  )

  results: dict[str, float] = {}
  start_time = time.perf_counter()
  try:
    with S.activate(setup.mesh, setup.rules):
      for step in range(first_step + 1, config.total_steps + 1):
        is_last = step == config.total_steps
        logs = step % config.log_every_steps == 0 or is_last
        saves = step % config.checkpoint_every_steps == 0 or is_last
        evaluates = evaluator is not None and ((is_last and config.eval.at_end) or evaluator.due(step))
        # Only these steps read from the device; every other step queues its update and goes on.
        state, step_metrics = train_step(state, next(loader))
        tally.add(step_metrics)
        if step == first_step + 1:  # once: rates and ETA are timed from here (not compilation)
          jax.block_until_ready(step_metrics)
          progress.started(step)

        if logs:
          means, skipped, limit_reached_at = tally.take()
          nonfinite.check(limit_reached_at, step)
          values = {f"train/{k}": v for k, v in means.items()}
          values["train/skipped_nonfinite"] = float(skipped)
          values["train/examples_per_s"] = progress.update(step, values)
          values.update({f"data/skipped_{k}": v for k, v in _skipped_over_processes(loader).items()})
          writer.write(step, values)

        if saves:
          if not logs:  # (a run past its non-finite limit writes no checkpoint)
            nonfinite.check(tally.limit_reached_at(), step)
          with _apart_from_training(progress, state):
            checkpointer.save(step, state, loader, force=True)

        if evaluates:
          with _apart_from_training(progress, state):
            results = _evaluate(
              evaluator, state, step, final=is_last and config.eval.at_end, writer=writer
            )

        check = logs or saves or step % config.preemption_check_every_steps == 0
        if not is_last and preemption.should_stop(step, check=check):
          if not saves:  # (else this step was just saved)
            nonfinite.check(tally.limit_reached_at(), step)
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


def _skipped_over_processes(loader: Any) -> dict[str, int]:
  """The examples the sources replaced, by reason, summed over processes (a collective: log
  steps only)."""
  local = loader.skipped
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils

  counts = np.asarray([local.get(reason, 0) for reason in SKIP_REASONS], np.int32)
  totals = multihost_utils.process_allgather(counts).sum(0)
  return {r: int(n) for r, n in zip(SKIP_REASONS, totals) if r in local or n}


class _apart_from_training:
  """Times a checkpoint or an evaluation out of the training rate: the queued steps finish
  first (they are training time), then the block's time is left out of ``train/examples_per_s``."""

  def __init__(self, progress: Progress, state: Any):
    self._progress, self._state = progress, state

  def __enter__(self):
    jax.block_until_ready(self._state)
    self._start = time.perf_counter()

  def __exit__(self, *exc):
    self._progress.exclude(time.perf_counter() - self._start)
    return False


def _evaluate(
  evaluator: Any, state: Any, step: int, *, final: bool, writer: MetricWriter
) -> dict[str, float]:
  start = time.perf_counter()
  results = evaluator(ema.weights(state), None if final else step)  # (the EMA when it is on)
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
