"""Training objectives: each owns its forward pass, loss terms and metric names.

The first objective in :data:`OBJECTIVES` whose ``applies(config)`` holds is the run's; adding
one is a new module here and a line in that tuple, nothing in the step or the loop.
"""

from __future__ import annotations

from typing import Any

from vlpt.train.objectives.base import Objective
from vlpt.train.objectives.coca import CocaObjective
from vlpt.train.objectives.contrastive import ContrastiveObjective
from vlpt.train.objectives.distillation import DistillationObjective
from vlpt.train.objectives.locca import LoccaObjective
from vlpt.train.objectives.self_distillation import enabled as self_distillation_enabled
from vlpt.train.objectives.self_distillation import with_self_distillation

# in order of precedence; ContrastiveObjective applies to every config (the default)
OBJECTIVES: tuple[type[Objective], ...] = (
  DistillationObjective,
  CocaObjective,
  LoccaObjective,
  ContrastiveObjective,
)


def objective_class(config: Any) -> type[Objective]:
  """The objective ``config`` asks for; with ``config.self_distillation`` on, it carries SigLIP 2's
  self-distillation terms too (:mod:`vlpt.train.objectives.self_distillation`)."""
  cls = next(cls for cls in OBJECTIVES if cls.applies(config))
  return with_self_distillation(cls) if self_distillation_enabled(config) else cls


__all__ = [
  "OBJECTIVES",
  "CocaObjective",
  "ContrastiveObjective",
  "DistillationObjective",
  "LoccaObjective",
  "Objective",
  "objective_class",
]
