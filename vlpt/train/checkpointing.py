"""Orbax checkpoints of the train state and the data iterator, as ``WORKDIR/checkpoints/<step>/``.

Saves are asynchronous (training continues while arrays are written) and keep the newest N.
The data iterator state is per process (``data/process_<i>-of-<n>.json``); a checkpoint written by
a different number of processes has none for this one (:meth:`Checkpointer.has_data_state`), and
the caller starts the (deterministic) stream at the restored step instead.

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
from vlpt.train.state import TrainState


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

  def check_parameters(self, step: int, abstract_params: Any) -> None:
    """A ConfigError naming the first parameter whose shape differs between ``step`` and this
    config's model (or that only one of them has), before orbax reads any array."""
    from etils import epath

    from vlpt.errors import ConfigError

    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / "state")
    saved = getattr(metadata, "tree", metadata)["params"]
    name = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)  # noqa: E731
    ours = {name(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    theirs = {name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved)}
    for key in sorted(set(ours) | set(theirs)):
      if ours.get(key) != theirs.get(key):
        raise ConfigError(
          f"{self.directory}/{step} was written by another model: parameter {key} is "
          f"{theirs.get(key, 'absent')} there and {ours.get(key, 'absent')} in this config. Use the "
          "run's own config (vlpt-eval --workdir W without --config reads W/vlpt_config.json) or "
          "one with the same config.model and tokenizer"
        )

  def restore(self, step: int, abstract_state: TrainState, loader: Any | None) -> TrainState:
    """Restores ``step`` onto the shardings in ``abstract_state``, and ``loader``'s position when
    one is given (only when :meth:`has_data_state`); a model that does not fit is one line."""
    self.check_parameters(step, abstract_state.params)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if loader is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(loader)
    return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters of ``step``, as host numpy arrays (no optimizer state, no mesh).

    For reading a run as a model (``vlpt.load(WORKDIR)``): the optimizer's moments and the
    devices' copies are never materialized, so a model needs about its own size in host memory.
    """
    item = {"params": abstract_params}
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
    return restored["state"]["params"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
