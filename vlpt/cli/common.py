"""Shared CLI plumbing: config flags, early errors as one line, distributed init."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vlpt import storage
from vlpt.config import MOVED_KEYS
from vlpt.errors import ConfigError, TrainingError

FLAGS = flags.FLAGS


CONFIG_HELP = (
  "a config file: configs/demo.py (a variant: configs/demo.py:tiny) or a run's vlpt_config.json; "
  "overrides as --config.key=value"
)
_OPTIONS = {"config_from_workdir": False}


def define_flags(*, config_from_workdir: bool = False) -> None:
  """``--workdir`` and the config: ``--config`` (``config_from_workdir``: optional, the run's
  recorded ``WORKDIR/vlpt_config.json`` by default). The config is loaded by
  :func:`vlpt.config.load_config` when the command line is parsed, overrides on top."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard.")
  flags.mark_flags_as_required(["workdir"])
  _OPTIONS["config_from_workdir"] = config_from_workdir


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


def _flag_value(argv: list[str], name: str) -> tuple[str | None, list[str]]:
  """(the value of ``--name`` / ``--name=``, argv without it)."""
  value, rest, skip = None, [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
      continue
    if arg == f"--{name}" and i + 1 < len(argv):
      value, skip = argv[i + 1], True
    elif arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    else:
      rest.append(arg)
  return value, rest


def _load_config(argv: list[str]):
  """The config ``--config`` names (or, where allowed, the workdir's recorded one) -> (config,
  argv without ``--config``)."""
  from vlpt.config import WORKDIR_CONFIG, config_from_dict, load_config

  spec, rest = _flag_value(argv, "config")
  if spec is None and any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
    from vlpt.config import default_config

    return default_config(), rest  # (absl prints the help and exits)
  if spec is None:
    workdir, _ = _flag_value(argv, "workdir")
    recorded = storage.join(workdir, WORKDIR_CONFIG) if workdir else None
    if not (_OPTIONS["config_from_workdir"] and recorded and storage.isfile(recorded)):
      where = f"; {recorded} does not exist" if _OPTIONS["config_from_workdir"] and recorded else ""
      fail(f"--config is required ({CONFIG_HELP}){where}")
    spec = recorded
    print(f"[vlpt] config: {recorded} (the run's own; overrides on top)", file=sys.stderr, flush=True)
  if storage.is_remote(spec):  # a run's vlpt_config.json on GCS (a recipe is a local .py file)
    if not spec.endswith(".json") or not storage.isfile(spec):
      fail(f"config {spec!r} is not a vlpt_config.json that exists")
    return config_from_dict(json.loads(storage.read_text(spec))), rest
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    fail(f"config file {path!r} does not exist (e.g. --config configs/demo.py)")
  try:
    return load_config(spec), rest
  except ValueError as e:
    fail(f"--config {spec}: {e}")


# overrides inside sections whose keys their owners check (tower constructor arguments, a
# tokenizer's options, evaluation datasets): --config.SECTION.KEY=VALUE
_FREE_SETTING = re.compile(
  r"^--config\.(model\.image|model\.text|model\.decoder|data\.tokenizer|eval\.datasets\.\w+)"
  r"\.(\w+)=(.*)$",
  re.S,
)


def _split_free_settings(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
  """Overrides inside free-key sections, held back from absl and applied after it.

  Those sections list only the keys a recipe sets (a tower's ``width`` is often left to its
  variant; a ``config.eval.datasets`` entry lists only what differs from ``DATASET_DEFAULTS``), so
  absl would refuse ``--config.model.image.width=96`` as an unknown key. Held back here, they are
  set on the loaded config, and validation checks their names against the owner's (constructor
  arguments, dataset settings), with a did-you-mean hint.
  """
  rest, held = [], []
  for arg in argv:
    m = _FREE_SETTING.match(arg)
    if m:
      held.append(m.groups())
    else:
      rest.append(arg)
  return rest, held


def _parse_value(text: str, current, key: str):
  if isinstance(current, str):
    return text
  if isinstance(current, bool) and text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:  # numbers, None, booleans, tuples: Python literals; anything else stays a string
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(value, str) and (key == "tasks" or isinstance(current, (tuple, list))):
    # a bare word for a sequence: tasks=captioning or tasks=zeroshot,retrieval; one template
    value = tuple(t.strip() for t in value.split(",")) if key == "tasks" else (value,)
  return value


def _apply_free_settings(config, held: list[tuple[str, str, str]]) -> None:
  with config.unlocked():
    for section_path, key, text in held:
      section = config
      for part in section_path.split("."):
        if part not in section:  # a new evaluation dataset: --config.eval.datasets.pets.source=
          if not section_path.startswith("eval.datasets."):
            raise ConfigError(f"unknown config key 'config.{section_path}'")
          section[part] = {}
        section = section[part]
      section[key] = _parse_value(text, section.get(key), key)


def _unknown_override(config, argv: list[str]) -> str | None:
  """The first ``--config.PATH=`` of ``argv`` that ``config`` lacks, described with a hint."""
  from vlpt.config import describe_unknown_key

  for arg in argv:
    if arg.startswith("--config."):
      problem = describe_unknown_key(config, arg[len("--config.") :].partition("=")[0])
      if problem:
        return problem
  return None


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
  argv = _rename_moved_keys(argv)
  config, argv = _load_config(argv)
  argv, held = _split_free_settings(argv)
  try:
    # (config_flags registers one flag per --config.PATH override it finds in sys_argv)
    config_flags.DEFINE_config_dict("config", config, CONFIG_HELP, lock_config=True, sys_argv=argv)
    rest = FLAGS(argv)
    if held:
      _apply_free_settings(FLAGS.config, held)
    return rest
  except ConfigError as e:
    fail(str(e))
  except flags.Error as e:
    unknown = _unknown_override(config, argv)
    if unknown:
      fail(unknown)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[0].split(":")[0] if lines else "flags"
    fail(f"{first}: {lines[-1]}" if len(lines) > 1 else str(e))
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    unknown = _unknown_override(config, argv)
    message = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    fail(unknown or f"bad --config or override: {' '.join(message.split())}")
  return []


def prepare_runtime() -> None:
  """Sets the simulated device count from the config, then joins the process group."""
  from vlpt.distributed import cpu_unless_accelerator, initialize_from_env, set_host_device_count

  cpu_unless_accelerator()
  set_host_device_count(FLAGS.config.get("host_device_count"))
  initialize_from_env()
