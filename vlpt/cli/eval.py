"""``vlpt-eval --config CONFIG --workdir DIR``: evaluates the latest checkpoint in DIR.

Results are printed and appended to ``WORKDIR/metrics.jsonl`` at the checkpoint's step. With no
checkpoint in DIR and ``config.model.init_from`` set, the pretrained weights themselves are
evaluated (step 0): a converted open_clip / HF / big_vision model runs the same evaluators.
"""

from __future__ import annotations

from vlpt.cli.common import FLAGS, define_flags, fail, prepare_runtime, run_main


def main() -> None:
  prepare_runtime()
  import jax

  from vlpt.config import validate
  from vlpt.train.checkpointing import Checkpointer
  from vlpt.train.trainer import Evaluator, build, initial_state, load_checkpoint
  from vlpt.train.writers import MetricWriter

  config = FLAGS.config
  validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  if not config.eval.datasets:
    fail("config.eval.datasets is empty: nothing to evaluate")
  checkpointer = Checkpointer(FLAGS.workdir, keep=1, async_save=False)
  has_checkpoint = checkpointer.latest_step() is not None
  checkpointer.close()
  if not has_checkpoint and config.model.init_from:
    setup = build(config)
    state = initial_state(setup)
  else:
    try:
      setup, state = load_checkpoint(config, FLAGS.workdir)
    except FileNotFoundError as e:
      fail(f"{e} with vlpt-train, or set config.model.init_from to evaluate pretrained weights")
  step = int(state.step)
  results = Evaluator(setup)(state.params)
  writer = MetricWriter(FLAGS.workdir, tensorboard=False)
  writer.write(step, results)
  writer.close()
  if jax.process_index() == 0:
    for key, value in sorted(results.items()):
      print(f"{key} = {value:.4f}")


def run() -> None:
  define_flags()
  run_main(main)


if __name__ == "__main__":
  run()
