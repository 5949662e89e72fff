"""``vlpt-train --config CONFIG --workdir DIR [--config.key=value ...]``."""

from __future__ import annotations

from absl import flags

from vlpt.cli.common import FLAGS, define_flags, prepare_runtime, run_main


def main() -> None:
  prepare_runtime()
  from vlpt.train import train  # (after prepare_runtime: JAX starts with the device count)

  train(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)


def run() -> None:
  define_flags()
  flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir whose checkpoints were written under a different config.",
  )
  run_main(main)


if __name__ == "__main__":
  run()
