"""``vlpt-train --config CONFIG --workdir DIR [--config.key=value ...]``."""

from __future__ import annotations

from vlpt.cli.common import FLAGS, define_flags, prepare_runtime, run_main


def main() -> None:
  prepare_runtime()
  import jax

  from vlpt.config import validate
  from vlpt.train.trainer import train

  validate(FLAGS.config, num_devices=jax.device_count(), num_processes=jax.process_count())
  train(FLAGS.config, FLAGS.workdir)


def run() -> None:
  define_flags()
  run_main(main)


if __name__ == "__main__":
  run()
