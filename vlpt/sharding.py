"""Device mesh and logical-axis sharding.

Models annotate parameters and activations with *logical* axis names ("embed", "mlp",
"activation_batch", ...). This module owns the only mapping from those names to the physical
mesh axes ``data``, ``fsdp`` and ``tensor``, so data-, fully-sharded- and tensor-parallel layouts
are a change of rules in the config, never of model code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# config.mesh keys besides the axis sizes: dcn_data, the slices the data axis spans over the
# data-center network (-1: as many as the devices come in; every other axis stays in a slice)
MESH_OPTIONS = ("dcn_data",)
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both

LogicalRules = tuple[tuple[str, Any], ...]

# Parameters: "embed" (the model width) is split over fsdp (ZeRO-3 style), the wide dims over
# tensor. Activations keep the batch over (data, fsdp) and heads/mlp over tensor. With fsdp=1 and
# tensor=1 (the default mesh) this is plain data parallelism.
DEFAULT_RULES: LogicalRules = (
  ("activation_batch", BATCH_AXES),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
  ("activation_kv", None),
  ("activation_mlp", "tensor"),
  ("activation_vocab", "tensor"),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", None),
  ("vocab", "tensor"),
  ("length", None),
  ("patch", None),
  ("channels", None),
  ("norm", None),
  ("proj", None),
  ("layers", None),  # the stacked-layer axis of scanned towers
  ("queries", None),  # attention-pooler queries
)


def rules_from_config(overrides: Sequence[Sequence[Any]] | None) -> LogicalRules:
  """Default rules with the config's (logical, mesh-axes) pairs taking precedence."""
  rules = dict(DEFAULT_RULES)
  for entry in overrides or ():
    name, target = entry
    if target is not None and not isinstance(target, str):
      target = tuple(target)
    rules[name] = target
  return tuple(rules.items())


def resolve_mesh_shape(shape: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Fills one -1 entry so the product equals ``num_devices``; raises ValueError otherwise."""
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(
        f"mesh: {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices "
        f"({num_devices} is not divisible by {known}); set config.mesh to sizes whose product is "
        f"{num_devices}"
      )
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh: {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but {num_devices} "
      f"are available; set config.mesh so the product is {num_devices} (or use -1 for one axis)"
    )
  return tuple(sizes)


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all devices (of all processes) with GSPMD-style (Auto) axes.

  TPU devices are laid out by their torus coordinates (:func:`tpu_device_array`). Other devices
  are ordered process-major so each process's devices hold one contiguous slice of the batch,
  which is what assembling global arrays from process-local data requires.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_mesh_shape(shape, len(devices))
  if devices[0].platform == "tpu" and hasattr(devices[0], "coords"):
    arr = tpu_device_array(sizes, devices, int(shape.get("dcn_data", -1)))
  else:
    devices.sort(key=lambda d: (d.process_index, d.id))
    arr = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def num_slices(devices: Sequence[jax.Device]) -> int:
  return len({getattr(d, "slice_index", 0) for d in devices})


def tpu_device_array(sizes: tuple[int, ...], devices: Sequence[jax.Device], dcn_data: int = -1):
  """(data, fsdp, tensor) devices following the interconnect: within a slice JAX's mesh utilities
  map the axes onto the torus so neighbours along an axis (the ring loss's ppermute, FSDP's
  gathers) are physical neighbours; across slices only the data axis goes over the data-center
  network (one gradient all-reduce per step), as multi-slice training needs."""
  from jax.experimental import mesh_utils

  slices = num_slices(devices)
  dcn = slices if dcn_data == -1 else dcn_data
  if dcn != slices:
    raise ValueError(f"mesh: dcn_data={dcn_data} but the devices form {slices} slice(s); use -1")
  if sizes[0] % dcn:
    raise ValueError(
      f"mesh: data={sizes[0]} must be a multiple of the {dcn} slices (only the data axis spans "
      "slices); put fsdp and tensor within a slice"
    )
  if dcn == 1:
    return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  ici = (sizes[0] // dcn, *sizes[1:])
  return mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices, allow_split_physical_axes=True)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(abstract_state: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for an nnx.State of annotated variables (partition metadata -> mesh axes)."""
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes ``mesh`` and ``rules`` current, so logical activation constraints take effect."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    yield
