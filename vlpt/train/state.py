"""The train state: a plain pytree of global arrays, so orbax can save it on any topology."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx, struct


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any  # nested dict of arrays (nnx.Param values)
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, so it checkpoints like any array
  # config.ema.decay > 0: float32 moving average of params, sharded like them (vlpt.train.ema);
  # None (an empty subtree: nothing computed, placed or saved) when the EMA is off
  ema: Any = None


def pure_params(module: nnx.Module) -> dict:
  """The module's nnx.Param values as a nested dict of arrays."""
  return nnx.state(module, nnx.Param).to_pure_dict()
