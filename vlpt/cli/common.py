"""Shared CLI plumbing: config flags, early errors as one line, distributed init."""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vlpt.config import MOVED_KEYS
from vlpt.errors import ConfigError, TrainingError

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file, e.g. configs/demo.py (variants as configs/x.py:variant).",
    lock_config=True,
  )
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
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
      main()
    except ConfigError as e:
      fail(str(e))
    except TrainingError as e:
      print(f"vlpt: error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  app.run(wrapped, flags_parser=_parse_flags)


def _check_config_path(argv: list[str]) -> None:
  for i, arg in enumerate(argv):
    value = None
    if arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    if value is not None:
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        fail(f"config file {path!r} does not exist (e.g. --config configs/demo.py)")


_DATASET_SETTING = re.compile(r"^--config\.eval\.datasets\.(\w+)\.(\w+)=(.*)$", re.S)


def _split_dataset_settings(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
  """Overrides of evaluation-dataset settings, held back from absl.

  A ``config.eval.datasets`` entry lists only the settings it changes; the rest take
  ``DATASET_DEFAULTS`` when the suite is built. ``--config.eval.datasets.NAME.KEY=VALUE`` of a
  setting the entry leaves out (or of a dataset the config does not list, which adds it) would
  otherwise be refused as an unknown key. Unknown setting names still reach absl, which refuses
  them; validation then reports what the entry lacks.
  """
  from vlpt.evaluation.suite import DATASET_DEFAULTS

  rest, held = [], []
  for arg in argv:
    m = _DATASET_SETTING.match(arg)
    if m and m.group(2) in DATASET_DEFAULTS:
      held.append(m.groups())
    else:
      rest.append(arg)
  return rest, held


def _apply_dataset_settings(config, held: list[tuple[str, str, str]]) -> None:
  datasets = config.eval.datasets
  with config.unlocked():
    for name, key, text in held:
      if name not in datasets:  # a new evaluation dataset, e.g. --config.eval.datasets.pets.source=
        datasets[name] = {}
      current = datasets[name].get(key)
      if isinstance(current, str):
        value = text
      else:  # numbers, None, booleans, tuples: Python literals; anything else stays a string
        try:
          value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
          value = text
      if isinstance(value, str) and (key == "tasks" or isinstance(current, (tuple, list))):
        # a bare word for a sequence: tasks=captioning or tasks=zeroshot,retrieval; one template
        value = tuple(t.strip() for t in value.split(",")) if key == "tasks" else (value,)
      datasets[name][key] = value


def _rename_moved_keys(argv: list[str]) -> list[str]:
  """``--config.OLD=V`` of a key that moved (vlpt.config.MOVED_KEYS) -> ``--config.NEW=V``, with a
  one-line notice: old command lines keep working for one release."""
  out = []
  for arg in argv:
    key, eq, value = arg.partition("=")
    old = key[len("--config.") :] if key.startswith("--config.") else None
    if old in MOVED_KEYS:
      new = MOVED_KEYS[old]
      print(
        f"[vlpt] note: --config.{old} is now --config.{new} (the old flag is accepted until vlpt 0.3)",
        file=sys.stderr,
        flush=True,
      )
      arg = f"--config.{new}{eq}{value}"
    out.append(arg)
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config load/override failures reported as one line."""
  _check_config_path(argv)
  argv = _rename_moved_keys(argv)
  argv, held = _split_dataset_settings(argv)
  saved_argv = sys.argv
  sys.argv = argv  # config_flags finds the overrides in sys.argv, not in the argv it is given
  try:
    rest = FLAGS(argv)
    if held:
      _apply_dataset_settings(FLAGS.config, held)
    return rest
  except ConfigError as e:
    fail(str(e))
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[0].split(":")[0] if lines else "flags"
    fail(f"{first}: {lines[-1]}" if len(lines) > 1 else str(e))
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ")
    fail(f"bad --config or override: {message}")
  finally:
    sys.argv = saved_argv
  return []


def prepare_runtime() -> None:
  """Sets the simulated device count from the config, then joins the process group."""
  from vlpt.distributed import initialize_from_env, set_host_device_count

  set_host_device_count(FLAGS.config.get("host_device_count"))
  initialize_from_env()
