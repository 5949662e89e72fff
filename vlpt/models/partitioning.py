"""Logical-axis helpers for model code: models name axes, the trainer decides what they mean."""

from __future__ import annotations


import jax
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P


def param(init, *axes: str | None):
  """Wraps an initializer so the parameter carries logical axis names."""
  return nnx.with_partitioning(init, tuple(axes))


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
  """Hints the activation layout by logical names; a no-op outside a mesh and rules context."""
  rules = flax_spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh is None or mesh.empty or mesh.size == 1:
    return x
  spec = P(*flax_spmd.from_sharding_rules(tuple(axes), rules))
  return jax.lax.with_sharding_constraint(x, spec)


