"""Model zoo: configs pick a model by ``config.model.name``.

``config.model`` holds only what builds the model (tower variants and keyword arguments, the
embedding size, temperature init, dtypes). Three facts come from elsewhere and are filled in by
:func:`model_kwargs`: the image resolution (``config.data.image_size``) and the text vocabulary and
context length (the tokenizer's, unless ``config.model.text`` sets them).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import jax
from flax import nnx

from vlpt.models.clip import CLIP
from vlpt.models.coca import CoCa, MultimodalDecoder
from vlpt.models.layers import check_attention
from vlpt.models.locca import LocCa, LocCaDecoder
from vlpt.models.text import TextTransformer
from vlpt.models.vit import VisionTransformer
from vlpt.registry import Registry

MODELS: Registry = Registry("model")
MODELS.register("clip")(CLIP)
MODELS.register("coca")(CoCa)
MODELS.register("locca")(LocCa)

# the towers' keyword arguments that the model passes itself (not config keys)
_SET_BY_THE_MODEL = ("self", "embed_dim", "rngs", "dtype", "param_dtype", "attention")
_TOWERS = (("image", VisionTransformer), ("text", TextTransformer), ("decoder", MultimodalDecoder))
# models with a decoder (config.model.decoder) -> its class
DECODERS = {"coca": MultimodalDecoder, "locca": LocCaDecoder}


def model_kwargs(model_config: Any, *, image_size: int, vocab_size: int, context_length: int) -> dict:
  """``config.model`` as the model's constructor arguments, the resolution, vocabulary and text
  length filled in (``vocab_size`` / ``context_length``: the tokenizer's)."""
  model = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model.items()}
  decoder = model.pop("decoder", None) or {}
  model["image"] = {**model["image"], "image_size": image_size}
  text = model["text"]
  if text.get("vocab_size") is None:
    text["vocab_size"] = vocab_size
  elif text["vocab_size"] < vocab_size:
    raise ValueError(
      f"config.model.text.vocab_size={text['vocab_size']} is smaller than the "
      f"tokenizer's vocabulary ({vocab_size}); raise it or set None"
    )
  if text.get("context_length") is None:
    text["context_length"] = context_length
  elif text["context_length"] < context_length:
    raise ValueError(
      f"config.model.text.context_length={text['context_length']} is shorter than "
      f"the tokenizer's ({context_length})"
    )
  if model["name"] in DECODERS:
    model["decoder"] = {
      "vocab_size": text["vocab_size"],
      "context_length": text["context_length"],
      **decoder,
    }
  elif decoder:
    raise ValueError(
      f"config.model.decoder is for CoCa and LocCa only (config.model.name={model['name']!r})"
    )
  return model


def build_model(model_config: Any, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates resolved model kwargs (:func:`model_kwargs`; ``name`` picks the class)."""
  kwargs = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  name = kwargs.pop("name")
  return MODELS.get(name)(rngs=rngs, **kwargs)


def _check_tower_keys(section: str, given: dict, cls: type) -> None:
  accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in _SET_BY_THE_MODEL]
  for key in given:
    if key not in accepted:
      close = difflib.get_close_matches(key, accepted, n=1)
      hint = f" (did you mean config.{section}.{close[0]}?)" if close else ""
      raise ValueError(f"unknown config key 'config.{section}.{key}'{hint}")


def check_config(kwargs: dict) -> None:
  """Resolved model kwargs (:func:`model_kwargs`) -> ValueError naming the first problem.

  Tower keys are checked against the constructors' signatures (with a hint); everything else is
  checked by the constructors themselves, run abstractly (``nnx.eval_shape``: no parameters are
  allocated, nothing compiles).
  """
  MODELS.get(kwargs["name"])
  attention = kwargs.get("attention", "xla")
  check_attention(attention)
  if attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(
      f"config.model.attention='cudnn' needs a GPU (cuDNN's fused attention); this process runs "
      f"on {jax.default_backend()}: use 'xla' or 'auto'"
    )
  for part, cls in _TOWERS:
    if part == "decoder":
      cls = DECODERS.get(kwargs["name"], cls)
    if part in kwargs:
      _check_tower_keys(f"model.{part}", kwargs[part], cls)
  try:
    nnx.eval_shape(lambda: build_model(kwargs, nnx.Rngs(0)))
  except (TypeError, ValueError) as e:  # a constructor's own check, or an argument's kind
    message = str(e)
    raise ValueError(message if message.startswith("config.") else f"config.model: {message}") from None


__all__ = ["CLIP", "DECODERS", "CoCa", "LocCa", "MODELS", "build_model", "check_config", "model_kwargs"]
