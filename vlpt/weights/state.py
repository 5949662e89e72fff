"""vlpt parameters as a flat ``{dotted.path: array}`` dict, in one canonical (unscanned) layout.

Scanned towers stack their blocks on a leading "layers" axis (``...blocks.attn.query`` of shape
``[depth, ...]``); the canonical layout lists them per block (``...blocks.3.attn.query``), so
converters never care how a model was built.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from flax import nnx

from vlpt.errors import WeightsError
from vlpt.weights.mapping import check_shapes


def _scanned_stacks(model: nnx.Module) -> dict[str, int]:
  """Dotted prefixes of scanned block stacks -> depth."""
  from vlpt.models.layers import Transformer

  out = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, Transformer) and node.scan:
      out[".".join(map(str, path)) + ".blocks."] = node.depth
  return out


def _raw_flat(model: nnx.Module) -> dict[str, Any]:
  state = nnx.state(model, nnx.Param)
  return {".".join(map(str, path)): v for path, v in nnx.to_flat_state(state)}


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as host numpy arrays, canonical layout."""
  stacks = _scanned_stacks(model)
  out = {}
  for key, var in _raw_flat(model).items():
    value = np.asarray(jax.device_get(var[...]))
    prefix = next((p for p in stacks if key.startswith(p)), None)
    if prefix is None:
      out[key] = value
    else:
      for i in range(stacks[prefix]):
        out[f"{prefix}{i}.{key[len(prefix) :]}"] = value[i]
  return out


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Canonical-layout shapes (works on abstract models from nnx.eval_shape too)."""
  stacks = _scanned_stacks(model)
  out = {}
  for key, var in _raw_flat(model).items():
    shape = tuple(var.get_value().shape)
    prefix = next((p for p in stacks if key.startswith(p)), None)
    if prefix is None:
      out[key] = shape
    else:
      for i in range(stacks[prefix]):
        out[f"{prefix}{i}.{key[len(prefix) :]}"] = shape[1:]
  return out


def to_model_layout(model: nnx.Module, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Canonical flat arrays -> the model's own flat layout (stacks scanned blocks)."""
  check_shapes(param_shapes(model), flat)
  extra = sorted(set(flat) - set(param_shapes(model)))
  if extra:
    raise WeightsError(f"{len(extra)} tensor(s) have no place in the model: {', '.join(extra[:8])}")
  stacks = _scanned_stacks(model)
  out = {}
  for key in _raw_flat(model):
    prefix = next((p for p in stacks if key.startswith(p)), None)
    if prefix is None:
      out[key] = flat[key]
    else:
      rest = key[len(prefix) :]
      out[key] = np.stack([flat[f"{prefix}{i}.{rest}"] for i in range(stacks[prefix])])
  return out


def assign_params(model: nnx.Module, flat: dict[str, np.ndarray]) -> None:
  """Writes canonical flat arrays into ``model`` in place (dtypes follow the model's params)."""
  own = to_model_layout(model, flat)
  for key, var in _raw_flat(model).items():
    var[...] = np.asarray(own[key]).astype(var[...].dtype)


def pure_tree(model: nnx.Module, flat: dict[str, np.ndarray]) -> dict:
  """Canonical flat arrays -> the nested pure dict of ``nnx.state(model, nnx.Param)``."""
  own = to_model_layout(model, flat)
  tree: dict = {}
  for key, value in own.items():
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
      node = node.setdefault(int(part) if re.fullmatch(r"\d+", part) else part, {})
    node[parts[-1]] = value
  return tree
