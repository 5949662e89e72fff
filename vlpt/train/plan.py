"""Compile a run's real train step for a named TPU topology on a machine with no TPU.

libtpu (``jax[tpu]``) carries the TPU compiler; ``jax.experimental.topologies`` describes a
topology's devices without opening any, so :func:`setup.build <vlpt.train.setup.build>`,
the objective and :func:`~vlpt.train.step.make_train_step` run unchanged over them, the step
is lowered on abstract arrays (``ShapeDtypeStruct`` with their shardings) and compiled. XLA's
memory analysis of that executable is the per-chip HBM the run would need; the model FLOPs come
from the model's sizes (:mod:`vlpt.models.flops`), since XLA's cost analysis counts a scanned
loop body once.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlpt import sharding as S
from vlpt.data.tokenizers import build_tokenizer
from vlpt.errors import ConfigError
from vlpt.models.flops import training_flops_per_example
from vlpt.train.objectives import objective_class
from vlpt.train.setup import Setup, build, naflex_training
from vlpt.train.step import batch_layout, make_train_step

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # per chip
  peak_bf16_flops: float  # per chip, dense bf16


# Google Cloud TPU documentation (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e): HBM per chip and
# peak bf16 compute per chip. Keyed by the device kind libtpu reports.
CHIPS = {
  "TPU v4": Chip("v4", 32 * GiB, 275e12),
  "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12),
  "TPU v5": Chip("v5p", 95 * GiB, 459e12),
  "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12),
}

# Tokenizers whose files a recipe names by placeholder: the vocabulary of the model the recipe
# reproduces, so the embedding table has its real size (SigLIP's 32k English sentencepiece model,
# Zhai et al. 2023, Sec. 4.2; BERT-base's WordPiece for ALIGN, Jia et al. 2021, Sec. 5; CLIP's BPE).
STAND_IN_VOCAB = {"sentencepiece": 32_000, "wordpiece": 30_522, "hf": 49_408, "clip_bpe": 49_408}

INSTALL_HINT = 'vlpt-plan needs the TPU compiler (libtpu): pip install "vlpt[tpu]" (or "jax[tpu]=={}")'


class NoCompiler(RuntimeError):
  """libtpu is not installed."""


def topology_devices(topology: str, num_slices: int = 1) -> list[jax.Device]:
  """The compile-only devices of ``topology`` (e.g. ``v5p:8x8x16``) times ``num_slices``."""
  if importlib.util.find_spec("libtpu") is None:
    raise NoCompiler(INSTALL_HINT.format(jax.__version__))
  from jax.experimental import topologies

  if not re.fullmatch(r"v\w+:\d+(x\d+){1,2}", topology or ""):
    raise ConfigError(f"--topology {topology!r}: expected e.g. v5e:16x16, v5p:8x8x16, v4:2x2x4, v6e:4x4")
  if num_slices < 1:
    raise ConfigError(f"--num_slices={num_slices} must be at least 1")
  try:
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs).devices
  except Exception as e:  # libtpu's own message (an unknown generation or shape)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"--topology {topology!r}: libtpu refused it ({first})") from None
  if devices[0].device_kind not in CHIPS:
    raise ConfigError(f"--topology {topology!r}: unknown chip {devices[0].device_kind!r}")
  return list(devices)


def chip_of(devices: list[jax.Device]) -> tuple[Chip, int]:
  """(the chip, devices per chip): libtpu gives v4 one device per TensorCore."""
  chips = {(getattr(d, "slice_index", 0), tuple(d.coords)) for d in devices}
  return CHIPS[devices[0].device_kind], len(devices) // len(chips)


def plan_config(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
  """A copy of ``config`` that needs no data, checkpoint or tokenizer file: shapes are what
  matters. Returns the notes saying what stands in for what."""
  c = copy.deepcopy(config)
  notes = []
  with c.unlocked():
    if c.data.train.source != "synthetic" or tuple(c.data.train.mixture):
      c.data.train.source, c.data.train.mixture = "synthetic", ()
      notes.append("data: the synthetic source stands in (shapes come from the config)")
    c.eval.datasets = ml_collections.ConfigDict()  # (evaluation is not compiled)
    c.eval.batch_size = c.batch_size
    if c.init.checkpoint:
      c.init.checkpoint, c.init.towers = None, ()
      if tuple(c.init.lock_towers):
        c.init.allow_random_lock = True
      notes.append("init.checkpoint: random parameters of the same shapes")
    c.host_device_count = None
    try:
      build_tokenizer(c.data.tokenizer)
    except Exception:  # a placeholder path: the recipe's vocabulary size, the same text length
      name = c.data.tokenizer.name
      length = int(c.data.tokenizer.get("context_length") or 64)
      if c.model.text.get("vocab_size") is None:
        c.model.text.vocab_size = STAND_IN_VOCAB.get(name, 32_000)
      c.data.tokenizer = ml_collections.ConfigDict({"name": "word", "context_length": length})
      notes.append(
        f"tokenizer: its file is missing; vocabulary {c.model.text.vocab_size}, {length} tokens"
      )
  return c, notes


@dataclasses.dataclass
class Plan:
  topology: str
  chips: int
  slices: int
  devices_per_chip: int
  chip: Chip
  mesh: dict[str, int]
  hbm_bytes: dict[str, int]  # per chip
  hbm_capacity_bytes: int
  model_flops_per_example: float
  model_flops_per_step: float
  flops_by_part: dict[str, float]
  xla_flops_per_device: float | None
  collective_bytes: dict[str, int]  # per device, loop bodies counted once
  compile_s: float
  notes: list[str]
  loss_temporaries_bytes: int | None = None

  @property
  def fits(self) -> bool:
    return self.hbm_bytes["total"] <= self.hbm_capacity_bytes

  @property
  def roofline_step_s(self) -> float:
    return self.model_flops_per_step / (self.chips * self.chip.peak_bf16_flops)

  def examples_per_s(self, mfu: float) -> float:
    return mfu * self.chips * self.chip.peak_bf16_flops / self.model_flops_per_example

  def largest_part(self) -> str:
    parts = {k: v for k, v in self.hbm_bytes.items() if k != "total"}
    return max(parts, key=parts.get)

  def to_json(self) -> dict[str, Any]:
    return {
      "topology": self.topology,
      "chips": self.chips,
      "slices": self.slices,
      "chip": self.chip.name,
      "mesh": self.mesh,
      "fits": self.fits,
      "hbm_capacity_bytes": self.hbm_capacity_bytes,
      "hbm_bytes": dict(self.hbm_bytes),
      "model_flops_per_step": self.model_flops_per_step,
      "model_flops_per_example": self.model_flops_per_example,
      "model_flops_by_part": self.flops_by_part,
      "roofline_step_s": self.roofline_step_s,
      "examples_per_s": {"mfu_0.4": self.examples_per_s(0.4), "mfu_0.6": self.examples_per_s(0.6)},
      "xla_flops_per_device": self.xla_flops_per_device,
      "collective_bytes": self.collective_bytes,
      "loss_temporaries_bytes": self.loss_temporaries_bytes,
      "compile_s": self.compile_s,
      "notes": self.notes,
    }


def _shard_bytes(tree: Any) -> int:
  """Bytes per device of abstract arrays carrying NamedShardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def check_divisible(setup: Setup) -> None:
  """ConfigError naming the first parameter whose dimension the mesh does not split evenly."""
  flat = jax.tree_util.tree_flatten_with_path(setup.abstract_state.params)[0]
  for path, leaf in flat:
    spec = leaf.sharding.spec
    for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(spec) + (None,) * len(leaf.shape))):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = math.prod(setup.mesh.shape[a] for a in axes)
      if size % ways:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        over = " x ".join(f"{a}={setup.mesh.shape[a]}" for a in axes)
        raise ConfigError(
          f"config.mesh: parameter {name} {tuple(leaf.shape)} has {size} along dimension {dim}, "
          f"which {over} does not divide; choose mesh sizes that divide the model's widths"
        )


def abstract_batch(setup: Setup) -> dict[str, jax.ShapeDtypeStruct]:
  """The loader's global batch as abstract arrays (:func:`vlpt.train.step.batch_layout`); a NaFlex
  run at its longest sequence length, with that length's batch."""
  c, mesh = setup.config, setup.mesh
  rows = c.batch_size
  if naflex_training(c):
    from vlpt.data.naflex import batch_sizes

    nf = c.data.train.naflex
    rows = batch_sizes(int(nf.token_budget), [max(nf.lengths)], setup.batch_shards)[max(nf.lengths)]
  return {
    name: jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=S.batch_sharding(mesh, 1 + len(shape)))
    for name, (shape, dtype) in batch_layout(setup).items()
  }


def loss_temporaries(setup: Setup, objective: Any) -> int | None:
  """Per-chip temporaries of the contrastive loss and its gradient compiled alone, on the
  global batch's embeddings (f32, split over the batch axes): the loss's share of a step's."""
  if not hasattr(objective, "sharded_loss"):
    return None
  c, mesh = setup.config, setup.mesh
  emb = jax.ShapeDtypeStruct(
    (c.batch_size, c.model.embed_dim), jnp.float32, sharding=S.batch_sharding(mesh, 2)
  )
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=S.replicated(mesh))

  def loss(image_emb, text_emb, scale, bias):
    return objective.sharded_loss(image_emb, text_emb, scale, bias)[0]

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  try:
    with S.activate(mesh, setup.rules):
      compiled = grad.lower(emb, emb, scalar, scalar).compile()
  except jax.errors.JaxRuntimeError as e:
    return _exhausted_temporaries(str(e))
  return int(compiled.memory_analysis().temp_size_in_bytes)


def lower_train_step(setup: Setup, objective: Any = None):
  """The train step of ``setup`` lowered on abstract state and batch (nothing allocated)."""
  objective = objective or objective_class(setup.config)(setup)
  if objective.aux_inputs()[0] is not None:
    raise ConfigError("vlpt-plan does not plan runs with a teacher (config.teacher.checkpoint)")
  step = make_train_step(setup, objective)
  with S.activate(setup.mesh, setup.rules):
    return step.lower(setup.abstract_state, abstract_batch(setup))


_COLLECTIVE = re.compile(
  r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)"
  r"(-start)?\("
)
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2}


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Result bytes of each kind of collective in optimized HLO, per device (a loop body once)."""
  out: dict[str, int] = {}
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    arrays = [
      math.prod(int(d) for d in dims.split(",") if d) * _BYTES.get(dt, 8 if dt.endswith("64") else 4)
      for dt, dims in _ARRAY.findall(m.group(1))
    ]
    if arrays:  # an async start's tuple holds (operand, result, ...): the largest is the result
      out[m.group(2)] = out.get(m.group(2), 0) + max(arrays)
  return out


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _exhausted_temporaries(message: str) -> int | None:
  """The temporaries the TPU compiler says a program needs, from its out-of-HBM error."""
  if "RESOURCE_EXHAUSTED" not in message:
    return None
  m = re.search(r"HLO temporaries \(([\d.]+)([KMGT]?)\)", message) or re.search(
    r"Used ([\d.]+)([KMGT]?) of", message
  )
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def compile_train_step(config: ml_collections.ConfigDict, devices: list) -> tuple[Setup, Any, float]:
  """(setup, the compiled train step, seconds to build, lower and compile) over ``devices``."""
  start = time.perf_counter()
  setup = build(config, devices)
  compiled = lower_train_step(setup).compile()
  return setup, compiled, time.perf_counter() - start


def model_flops(setup: Setup) -> dict[str, int]:
  """Training FLOPs per example by part (:mod:`vlpt.models.flops`) of ``setup``'s model."""
  c = setup.config
  return training_flops_per_example(
    setup.model_config, batch_size=c.batch_size, locked=tuple(c.init.lock_towers), loss=c.loss
  )


def plan(
  config: ml_collections.ConfigDict, topology: str, *, num_slices: int = 1, devices: list | None = None
) -> Plan:
  """Compiles ``config``'s train step for ``topology`` and measures it (ConfigError: the config
  or topology is wrong; NoCompiler: libtpu is missing)."""
  devices = devices or topology_devices(topology, num_slices)
  chip, per_chip = chip_of(devices)
  config, notes = plan_config(config)
  start = time.perf_counter()
  setup = build(config, devices)
  check_divisible(setup)
  objective = objective_class(config)(setup)
  state, batch = setup.abstract_state, abstract_batch(setup)
  hbm = {
    "parameters": _shard_bytes(state.params),
    "optimizer": _shard_bytes(state.opt_state),
    "batch": _shard_bytes(batch),
  }
  if state.ema is not None:  # config.ema.decay: one more float32 copy of the parameters
    hbm["ema"] = _shard_bytes(state.ema)
  cost = None
  try:
    compiled = lower_train_step(setup, objective).compile()
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program that overflows HBM
    temporaries = _exhausted_temporaries(str(e))
    if temporaries is None:
      raise
    compiled = None
    hbm.update(temporaries=temporaries, outputs=0)
    hbm["total"] = sum(hbm.values())
    notes.append(f"the TPU compiler stopped: {str(e).strip().splitlines()[0]}")
  compile_s = time.perf_counter() - start
  if compiled is not None:
    memory = compiled.memory_analysis()
    hbm["temporaries"] = int(memory.temp_size_in_bytes)
    hbm["outputs"] = int(memory.output_size_in_bytes - memory.alias_size_in_bytes)
    # what is live at once: the arguments (state, batch; the state's buffers are reused for the
    # new state), the outputs not aliased to them, the temporaries
    hbm["total"] = int(
      memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    ) + int(memory.temp_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  loss_temp = loss_temporaries(setup, objective)
  flops = model_flops(setup)
  chips = len(devices) // per_chip
  return Plan(
    topology=topology,
    chips=chips,
    slices=num_slices,
    devices_per_chip=per_chip,
    chip=chip,
    mesh=dict(setup.mesh.shape),
    hbm_bytes=hbm,
    hbm_capacity_bytes=chip.hbm_bytes // per_chip,
    model_flops_per_example=float(flops["total"]),
    model_flops_per_step=float(flops["total"]) * config.batch_size,
    flops_by_part={k: float(v) for k, v in flops.items() if k != "total"},
    xla_flops_per_device=float(cost["flops"])
    if compiled is not None and cost and "flops" in cost
    else None,
    collective_bytes=collective_bytes(compiled.as_text()) if compiled is not None else {},
    compile_s=compile_s,
    notes=notes,
    loss_temporaries_bytes=loss_temp,
  )
