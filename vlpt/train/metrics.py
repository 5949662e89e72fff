"""Training metrics as clu Collections, averaged over a log interval on device.

clu reads a Collection's fields from its class annotations at runtime (hence no
``from __future__ import annotations`` and no subclassing); :func:`train_metrics` builds one
class per set of extra loss terms (an objective's ``extra_terms``).
"""

import functools

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
