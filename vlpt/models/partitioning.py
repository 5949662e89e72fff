"""Logical-axis helpers for model code: models name axes, the trainer decides what they mean."""

from __future__ import annotations

import jax
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P


def param(init, *axes: str | None):
  """Wraps an initializer so the parameter carries logical axis names.

  Placement is the trainer's job (it jits the init with explicit out_shardings), so parameters
  are never sharded eagerly at creation, whatever mesh is current.
  """
  return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)


def annotated(value: jax.Array, *axes: str | None) -> nnx.Param:
  """An nnx.Param holding ``value`` with logical axis names (see :func:`param`)."""
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
  """Hints the activation layout by logical names; a no-op outside a mesh and rules context."""
  rules = flax_spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh is None or mesh.empty or mesh.size == 1:
    return x
  spec = P(*flax_spmd.from_sharding_rules(tuple(axes), rules))
  return jax.lax.with_sharding_constraint(x, spec)
