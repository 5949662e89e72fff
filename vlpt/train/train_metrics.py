"""Training metrics as a clu Collection, averaged over a log interval on device.

(No ``from __future__ import annotations`` here: clu reads the field annotations at runtime.)
"""

from clu import metrics as clu_metrics
from flax import struct


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Fetched to the host only when a log line is written."""

  loss: clu_metrics.Average.from_output("loss")
  i2t_acc: clu_metrics.Average.from_output("i2t_acc")
  t2i_acc: clu_metrics.Average.from_output("t2i_acc")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  logit_scale: clu_metrics.LastValue.from_output("logit_scale")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


@struct.dataclass
class CocaTrainMetrics(clu_metrics.Collection):
  """CoCa logs its two loss terms too (``loss`` is their weighted sum).

  (clu collects a Collection's fields from its own annotations only, hence no subclassing.)
  """

  loss: clu_metrics.Average.from_output("loss")
  i2t_acc: clu_metrics.Average.from_output("i2t_acc")
  t2i_acc: clu_metrics.Average.from_output("t2i_acc")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  logit_scale: clu_metrics.LastValue.from_output("logit_scale")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  contrastive_loss: clu_metrics.Average.from_output("contrastive_loss")
  caption_loss: clu_metrics.Average.from_output("caption_loss")


@struct.dataclass
class DistillTrainMetrics(clu_metrics.Collection):
  """Distillation logs its contrastive and distillation terms (``loss`` is their sum)."""

  loss: clu_metrics.Average.from_output("loss")
  i2t_acc: clu_metrics.Average.from_output("i2t_acc")
  t2i_acc: clu_metrics.Average.from_output("t2i_acc")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  logit_scale: clu_metrics.LastValue.from_output("logit_scale")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  contrastive_loss: clu_metrics.Average.from_output("contrastive_loss")
  distill_loss: clu_metrics.Average.from_output("distill_loss")
