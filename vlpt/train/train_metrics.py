"""Training metrics as clu Collections, averaged over a log interval on device.

clu reads a Collection's fields from its class annotations at runtime (hence no
``from __future__ import annotations`` and no subclassing); :func:`_collection` builds one
class per objective from the shared fields plus that objective's extra loss terms.
"""

from clu import metrics as clu_metrics
from flax import struct


def _collection(name: str, doc: str, extra_terms: tuple[str, ...] = ()) -> type:
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
  cls = type(name, (clu_metrics.Collection,), {"__annotations__": fields, "__doc__": doc,
                                                "__module__": __name__})
  return struct.dataclass(cls)


TrainMetrics = _collection("TrainMetrics", "Fetched to the host only when a log line is written.")
CocaTrainMetrics = _collection("CocaTrainMetrics", "CoCa: also its two loss terms.",
                               ("contrastive_loss", "caption_loss"))
DistillTrainMetrics = _collection("DistillTrainMetrics",
                                  "Distillation: also its contrastive and distillation terms.",
                                  ("contrastive_loss", "distill_loss"))
