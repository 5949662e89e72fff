"""Model zoo: configs pick a model by ``config.model.name``."""

from __future__ import annotations

from typing import Any

from flax import nnx

from vlpt.models.clip import CLIP
from vlpt.models.coca import CoCa
from vlpt.registry import Registry

MODELS: Registry = Registry("model")
MODELS.register("clip")(CLIP)
MODELS.register("coca")(CoCa)


def build_model(model_config: Any, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates ``config.model`` (its ``name`` picks the class; the other keys are kwargs)."""
  kwargs = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  name = kwargs.pop("name")
  return MODELS.get(name)(rngs=rngs, **kwargs)


__all__ = ["CLIP", "CoCa", "MODELS", "build_model"]
