"""Orbax checkpoints of the train state and the data iterator, as ``WORKDIR/checkpoints/<step>/``.

Saves are asynchronous (training continues while arrays are written) and keep the newest N.
The data iterator state is per process (``data/process_<i>-of-<n>.json``); a checkpoint written by
a different number of processes has none for this one (:meth:`Checkpointer.has_data_state`), and
the caller starts the (deterministic) stream at the restored step instead.

The EMA weights (``config.ema.decay``) are part of the state and are restored with it; a
checkpoint without them restored under a config with them starts them from its parameters, and
one with them restored without them drops them once read; both say so in one line.

The workdir may be ``gs://``: every process opens the same directory, orbax's primary process
writes the metadata and commits a step, and all processes list the same steps
(:meth:`Checkpointer.latest_step`).
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlpt import storage
from vlpt.train import ema
from vlpt.train.state import TrainState

FIELDS = ("step", "params", "opt_state", "rng")  # TrainState's fields besides ``ema``


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = storage.join(storage.resolve(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The complete checkpoints' steps, in order."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: TrainState, loader: Any, *, force: bool = False) -> bool:
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(loader)
      ),
      force=force,
    )

  def has_data_state(self, step: int) -> bool:
    """Whether ``step`` holds this process's data-iterator state (saved by as many processes)."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return storage.isfile(storage.join(self.directory, str(step), "data", name))

  def _saved_tree(self, step: int) -> dict:
    """The saved state's tree of array metadata (read before any array)."""
    from etils import epath

    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / "state")
    return getattr(metadata, "tree", metadata)

  def has_ema(self, step: int) -> bool:
    """Whether ``step`` holds EMA weights (saved with ``config.ema.decay > 0``)."""
    return self._saved_tree(step).get("ema") is not None

  def check_parameters(self, step: int, abstract_params: Any, saved_tree: dict | None = None) -> None:
    """A ConfigError naming the first parameter whose shape differs between ``step`` and this
    config's model (or that only one of them has), before orbax reads any array; the EMA, when
    saved, is checked the same way."""
    from vlpt.errors import ConfigError

    saved_tree = self._saved_tree(step) if saved_tree is None else saved_tree
    name = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)  # noqa: E731
    ours = {name(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    for part in ("params", "ema"):
      saved = saved_tree.get(part)
      if saved is None:
        continue
      theirs = {name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved)}
      for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
          what = "parameter" if part == "params" else "EMA weight"
          raise ConfigError(
            f"{self.directory}/{step} was written by another model: {what} {key} is "
            f"{theirs.get(key, 'absent')} there and {ours.get(key, 'absent')} in this config. Use "
            "the run's own config (vlpt-eval --workdir W without --config reads "
            "W/vlpt_config.json) or one with the same config.model and tokenizer"
          )

  def restore(self, step: int, abstract_state: TrainState, loader: Any | None) -> TrainState:
    """Restores ``step`` onto the shardings in ``abstract_state``, and ``loader``'s position when
    one is given (only when :meth:`has_data_state`); a model that does not fit is one line.

    The EMA is restored whenever both the checkpoint and ``abstract_state`` have one (never
    silently re-initialized: orbax refuses a tree that does not match the saved one). A checkpoint
    without it (saved with the EMA off, or by an older vlpt) under a config with it: the EMA
    starts from the restored parameters. A checkpoint with it under a config without it: the
    EMA is read and dropped. Each case logs one line.
    """
    saved_tree = self._saved_tree(step)
    self.check_parameters(step, abstract_state.params, saved_tree)
    wanted, saved = abstract_state.ema is not None, saved_tree.get("ema") is not None
    # A dict, so a checkpoint with no "ema" entry at all (older vlpt) restores too.
    item = {name: getattr(abstract_state, name) for name in FIELDS}
    if "ema" in saved_tree:  # (read even when not wanted: orbax restores the saved tree whole)
      item["ema"] = None
      if saved:
        item["ema"] = abstract_state.ema if wanted else ema.abstract(abstract_state.params)
    items = {"state": ocp.args.StandardRestore(item)}
    if loader is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(loader)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
    state = TrainState(**{name: restored[name] for name in FIELDS}, ema=restored.get("ema"))
    where = f"{self.directory}/{step}"
    if wanted and not saved:
      shardings = jax.tree.map(lambda a: a.sharding, abstract_state.ema)
      state = state.replace(ema=jax.jit(ema.init, out_shardings=shardings)(state.params))
      _say(f"{where} holds no EMA weights: the EMA (config.ema.decay) starts from its parameters")
    elif saved and not wanted:
      state = state.replace(ema=None)
      _say(f"{where} holds EMA weights; config.ema.decay=0, so they are not restored")
    if wanted and jax.tree.structure(state.ema) != jax.tree.structure(state.params):
      from vlpt.errors import TrainingError

      raise TrainingError(f"{where}: the restored EMA weights do not match the parameters")
    return state

  def restore_params(self, step: int, abstract_params: Any, *, part: str = "params") -> Any:
    """Only the parameters of ``step`` (``part="ema"``: its EMA weights, cast to the parameters'
    dtypes), as host numpy arrays (no optimizer state, no mesh).

    For reading a run as a model (``vlpt.load(WORKDIR)``): the optimizer's moments and the
    devices' copies are never materialized, so a model needs about its own size in host memory.
    """
    if part not in ("params", "ema"):
      raise ValueError(f"part={part!r}: 'params' or 'ema'")
    item = {part: abstract_params}
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=item,
          restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item),
          partial_restore=True,
        )
      ),
    )
    return jax.tree.map(lambda x, a: np.asarray(x, a.dtype), restored["state"][part], abstract_params)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[vlpt] {message}", flush=True)
