"""Training metrics as clu Collections, averaged over a log interval on device.

clu reads a Collection's fields from its class annotations at runtime (hence no
``from __future__ import annotations`` and no subclassing); :func:`train_metrics` builds one
class per set of extra loss terms (an objective's ``extra_terms``).
"""

import functools

import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics
from flax import struct


@functools.cache
def train_metrics(extra_terms: tuple = ()) -> type:
  """The Collection of every objective's fields plus ``extra_terms``; fetched to the host only
  when a log line is written."""
  fields = {
    "loss": clu_metrics.Average.from_output("loss"),
    "i2t_acc": clu_metrics.Average.from_output("i2t_acc"),
    "t2i_acc": clu_metrics.Average.from_output("t2i_acc"),
    "grad_norm": clu_metrics.Average.from_output("grad_norm"),
    "logit_scale": clu_metrics.LastValue.from_output("logit_scale"),
    "learning_rate": clu_metrics.LastValue.from_output("learning_rate"),
    # 1 where the step's loss or gradient was not finite and its update was skipped
    "skipped_nonfinite": clu_metrics.Average.from_output("skipped_nonfinite"),
    **{term: clu_metrics.Average.from_output(term) for term in extra_terms},
  }
  name = "TrainMetrics" + "".join(t.title().replace("_", "") for t in extra_terms)
  cls = type(name, (clu_metrics.Collection,), {"__annotations__": fields, "__module__": __name__})
  return struct.dataclass(cls)


class Tally:
  """The log interval's metrics and the run of non-finite steps, accumulated on device.

  :meth:`add` is one small jitted update per step (no transfer, nothing waited for), so the host
  runs ahead of the device; :meth:`take` and :meth:`limit_reached_at` read it at log and
  checkpoint steps. The carry counts the steps itself, so the step needs no host input either.
  The tally is replicated over the mesh like the step's metrics. (On one device it dispatched
  faster, but that device then ran behind the others, and such a run hung once here in XLA's CPU
  collectives, 8 simulated devices on 2 busy cores: every device runs the same programs now.)
  """

  def __init__(self, metrics_cls: type, sharding, first_step: int, nonfinite_limit: int):
    def fresh(step):
      zero = jnp.zeros([], jnp.int32)
      return {"metrics": metrics_cls.empty(), "step": step, "streak": zero, "limit_reached_at": zero}

    def add(carry, step_metrics):
      step = carry["step"] + 1
      skipped = step_metrics.skipped_nonfinite.total > 0
      streak = jnp.where(skipped, carry["streak"] + 1, 0)
      reached = carry["limit_reached_at"]
      return {
        "metrics": carry["metrics"].merge(step_metrics),
        "step": step,
        "streak": streak,
        "limit_reached_at": jnp.where((reached == 0) & (streak >= nonfinite_limit), step, reached),
      }

    def summary(carry):
      m = carry["metrics"]
      return m.compute(), m.skipped_nonfinite.total, carry["limit_reached_at"]

    self._carry = jax.jit(lambda: fresh(jnp.int32(first_step)), out_shardings=sharding)()
    self._add = jax.jit(add, out_shardings=sharding, donate_argnums=0)
    self._summary = jax.jit(summary, out_shardings=sharding)
    self._reset = jax.jit(
      lambda c: {**c, "metrics": metrics_cls.empty()}, out_shardings=sharding, donate_argnums=0
    )

  def add(self, step_metrics) -> None:
    self._carry = self._add(self._carry, step_metrics)

  def take(self) -> tuple[dict, int, int]:
    """(the interval's averages, its skipped steps, :meth:`limit_reached_at`); starts the next
    interval."""
    means, skipped, reached = jax.device_get(self._summary(self._carry))
    self._carry = self._reset(self._carry)
    return {k: float(v) for k, v in means.items()}, int(skipped), int(reached)

  def limit_reached_at(self) -> int:
    """The step at which ``nonfinite_limit`` steps in a row were skipped; 0: not reached."""
    return int(jax.device_get(self._carry["limit_reached_at"]))
