"""A run's records in its workdir, besides checkpoints and metrics: the resolved config (what
``vlpt.load`` and ``vlpt-eval`` read back), the environment it ran in, and the guard against
resuming under another config."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from typing import Any

import jax
import ml_collections

from vlpt import storage
from vlpt.config import WORKDIR_CONFIG, config_from_dict
from vlpt.errors import ConfigError
from vlpt.train.writers import METRICS_FILE, read_rows

RUN_RECORD = "vlpt_run.json"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


# Keys that change how a run is watched or fed, never what it computes: free to change on resume.
OPERATIONAL_KEYS = (
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "async_checkpointing",
  "host_device_count",
  "eval.",
  "max_consecutive_nonfinite",
  "preemption_check_every_steps",
  "debug_",
  "data.num_workers",
  "data.read_threads",
  "data.prefetch",
)


def config_differences(old: dict, new: dict) -> list[str]:
  """``key: old -> new`` for every leaf that differs, operational keys aside."""
  a, b = _flatten(old), _flatten(new)
  keys = [k for k in sorted(set(a) | set(b)) if not k.startswith(OPERATIONAL_KEYS)]
  return [
    f"config.{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
    for k in keys
    if a.get(k, "<absent>") != b.get(k, "<absent>")
  ]


def check_config_unchanged(
  config: ml_collections.ConfigDict, workdir: str, *, allow_change: bool = False
) -> None:
  """Refuses to resume checkpoints written under another config (unless ``allow_change``)."""
  path = storage.join(workdir, WORKDIR_CONFIG)
  if not storage.exists(path):
    return
  old = config_from_dict(json.loads(storage.read_text(path)))  # (moved keys at their new place)
  diffs = config_differences(
    json.loads(old.to_json_best_effort()), json.loads(config.to_json_best_effort())
  )
  if diffs and not allow_change:
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise ConfigError(
      f"{workdir} holds checkpoints of a run with a different config ({shown}); "
      "use a new --workdir, or pass --allow_config_change to resume anyway"
    )
  if diffs and jax.process_index() == 0:
    print(f"[vlpt] resuming with a changed config (allowed): {'; '.join(diffs)}", flush=True)


def write_run_record(config: ml_collections.ConfigDict, workdir: str, setup: Any) -> None:
  """The resolved config (what ``vlpt.load`` reads back) and the run's environment: package
  versions, devices and mesh, in ``vlpt_run.json``. Written atomically, by process 0 only."""

  def atomic(name: str, text: str) -> None:
    storage.write_text(storage.join(workdir, name), text)

  atomic(WORKDIR_CONFIG, config.to_json_best_effort(indent=2))
  versions = {}
  for pkg in (
    "vlpt",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "ml_collections",
    "clu",
    "numpy",
  ):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  record = {
    "python": platform.python_version(),
    "packages": versions,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "device_count": jax.device_count(),
    "process_count": jax.process_count(),
    "mesh": dict(setup.mesh.shape),
    "model_config": setup.model_config,
    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  atomic(RUN_RECORD, json.dumps(record, indent=2, default=str))


def recorded_results(workdir: str, step: int) -> dict[str, float]:
  """The evaluation results ``metrics.jsonl`` holds for ``step`` (training/data rows left out)."""
  path = storage.join(workdir, METRICS_FILE)
  results: dict[str, float] = {}
  if storage.isfile(path):
    for row in read_rows(path):
      if row.get("step") == step:
        results.update(
          {k: v for k, v in row.items() if k != "step" and not k.startswith(("train/", "data/"))}
        )
  return results
