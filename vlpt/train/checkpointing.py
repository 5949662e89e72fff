"""Orbax checkpoints of the train state and the data iterator, as ``WORKDIR/checkpoints/<step>/``.

Saves are asynchronous (training continues while arrays are written) and keep the newest N.
The data iterator state is per process; when a checkpoint is restored on a different number of
processes, it cannot apply, and the caller repositions the (deterministic) stream by step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlpt.train.state import TrainState

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=async_save,
                                             create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, loader: Any, *, force: bool = False) -> bool:
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(loader)),
        force=force)

  def restore(self, step: int, abstract_state: TrainState, loader: Any | None
              ) -> tuple[TrainState, bool]:
    """Restores ``step`` onto the shardings in ``abstract_state``.

    Returns (state, data_restored): the loader's state is restored when it was saved by the
    same number of processes.
    """
    if loader is not None:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(loader)))
        return restored["state"], True
      except (ValueError, FileNotFoundError) as e:
        if "does not exist" not in str(e):
          raise
        log.warning("data iterator state of step %d was written by a different number of "
                    "processes than %d; repositioning the stream by step", step,
                    jax.process_count())
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], False

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters of ``step``, as host numpy arrays (no optimizer state, no mesh).

    For reading a run as a model (``vlpt.load(WORKDIR)``): the optimizer's moments and the
    devices' copies are never materialized, so a model needs about its own size in host memory.
    """
    item = {"params": abstract_params}
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                             item),
        partial_restore=True)))
    return restored["state"]["params"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
