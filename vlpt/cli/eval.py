"""``vlpt-eval --workdir DIR [--config CONFIG]``: evaluates the latest checkpoint in DIR.

Without ``--config`` the run's own recorded config (``DIR/vlpt_config.json``) is used, overrides
(``--config.key=value``) on top.

Results are printed and appended to ``WORKDIR/metrics.jsonl`` at the checkpoint's step. With no
checkpoint in DIR and ``config.init.checkpoint`` set, the pretrained weights themselves are
evaluated (step 0): a converted open_clip / HF / big_vision model runs the same evaluators.
"""

from __future__ import annotations

from vlpt.cli.common import FLAGS, define_flags, prepare_runtime, run_main


def main() -> None:
  prepare_runtime()
  import jax  # (after prepare_runtime: JAX starts with the device count)

  from vlpt.train import evaluate

  results = evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    for key, value in sorted(results.items()):
      print(f"{key} = {value:.4f}")


def run() -> None:
  define_flags(config_from_workdir=True)
  run_main(main)


if __name__ == "__main__":
  run()
