"""Shared CLI plumbing: config flags, early errors as one line, distributed init."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from vlpt.config import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/demo.py "
                                  "(variants as configs/x.py:variant).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard.")
  flags.mark_flags_as_required(["config", "workdir"])


def fail(message: str) -> None:
  print(f"vlpt: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def run_main(main: Callable[[], None]) -> None:
  """Runs ``main`` under absl, turning configuration problems into one-line errors."""

  def wrapped(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]}; overrides look like --config.key=value")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
      main()
    except ConfigError as e:
      fail(str(e))

  app.run(wrapped)


def prepare_runtime() -> None:
  """Sets the simulated device count from the config, then joins the process group."""
  from vlpt.distributed import initialize_from_env, set_host_device_count
  set_host_device_count(FLAGS.config.get("host_device_count"))
  initialize_from_env()
