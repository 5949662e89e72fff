"""EMA weights (``config.ema.decay``): an exponential moving average of the parameters (Polyak
averaging), kept in the train state beside them and updated in the jitted step.

``ema = decay * ema + (1 - decay) * params`` after each applied update, in float32 (one more fp32
copy of the parameters, sharded like them). A skipped (non-finite) step leaves it unchanged, as it
leaves the parameters. Frozen parameters (``config.optimizer.freeze``, locked towers) never
change, so their average is the parameters themselves, copied exactly. When the EMA is on, the
evaluations, ``vlpt-eval``, exports and ``vlpt.load`` of a workdir use it (:func:`weights`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vlpt.optim import freeze_patterns, frozen_labels


def check_config(config: Any) -> None:
  """``config.ema`` -> ValueError: the decay must be a number in [0, 1) (0: off)."""
  decay = config.ema.decay
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
    raise ValueError(
      f"config.ema.decay={decay!r} must be a number in [0, 1): 0 turns the EMA off, "
      "e.g. 0.999 averages over about 1000 steps"
    )


def enabled(config: Any) -> bool:
  return float(config.ema.decay) > 0.0


def init(params: Any) -> Any:
  """The first EMA: the parameters, in float32 (a copy: never the parameters' own buffers, which
  the step donates)."""
  return jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)


def abstract(abstract_params: Any) -> Any:
  """The EMA's shapes (float32) with the parameters' shardings, for restores."""
  return jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=a.sharding), abstract_params
  )


def make_update(config: Any, params: Any):
  """``update(ema, new_params) -> ema`` for the step (``params``: the tree's structure); frozen
  parameters are copied, so the EMA of a locked tower is its parameters bit for bit."""
  decay = jnp.float32(config.ema.decay)
  frozen = jax.tree.map(lambda label: label == "frozen", frozen_labels(params, freeze_patterns(config)))

  def one(is_frozen, ema, new):
    new = new.astype(jnp.float32)
    return new if is_frozen else decay * ema + (1 - decay) * new

  return lambda ema, new_params: jax.tree.map(one, frozen, ema, new_params)


def weights(state: Any) -> Any:
  """The weights a run is evaluated and exported with: the EMA (in the parameters' dtypes) when
  the state carries one, else the parameters."""
  if state.ema is None:
    return state.params
  return jax.tree.map(lambda e, p: e.astype(p.dtype), state.ema, state.params)
