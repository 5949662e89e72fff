"""Training: the loop (:func:`train`), evaluation of a run (:func:`evaluate`), and the pieces
they are built from — setup, objectives, the jitted step, checkpoints, watches, records."""

from vlpt.train.evaluation import evaluate
from vlpt.train.loop import train

__all__ = ["evaluate", "train"]
