"""``vlpt-plan --config CONFIG --topology T [--num_slices N] [--json] [--suggest] [--config.k=v ...]``.

Compiles the run's real train step for a TPU topology on this machine (no TPU, data or
checkpoint needed; libtpu compiles) and reports per-chip HBM, model FLOPs and the roofline step
time. Exit 0: it fits; 3: it does not (one line: the largest part and what to change); 2: a bad
config or topology; 1: libtpu is missing (one line: how to install it).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from vlpt.cli.common import FLAGS, run_main

NOT_FIT_EXIT = 3

# ways to lower per-chip memory, cheapest first: FSDP costs only (overlappable) collectives; the
# ring loss a second pass over logit tiles; remat recomputes part of the forward pass ("dots"
# keeps matmul outputs, "full" keeps nothing: about +1/3 of the FLOPs); gradient accumulation
# (GradCache) re-runs the towers' forward pass and runs smaller matmuls
REMAT_ORDER = ("dots", "dots_no_batch", "full")
ACCUMULATION_ORDER = (2, 4, 8, 16, 32)


def _gib(n: float) -> str:
  for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
    if n >= size:
      return f"{n / size:,.2f} {unit}"
  return f"{n:.0f} B"


def _flop(n: float) -> str:
  for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if n >= size:
      return f"{n / size:,.2f} {unit}"
  return f"{n:.0f} FLOP"


def _advice(plan) -> str:
  part = plan.largest_part()
  if part in ("parameters", "optimizer", "ema"):
    fix = "shard them with --config.mesh.fsdp (and data=-1), or a lighter optimizer"
  elif part == "temporaries":
    fix = (
      "set a remat policy (--config.model.image.remat=full, .text.remat=full), "
      "--config.accumulation_steps=2 or more, the ring loss (--config.loss.impl=ring) with a "
      "smaller --config.loss.tile_size, or a smaller --config.batch_size"
    )
  else:
    fix = "use a smaller --config.batch_size or more chips"
  return (
    f"does not fit: {_gib(plan.hbm_bytes['total'])} per chip > {_gib(plan.hbm_capacity_bytes)} "
    f"({plan.chip.name}); largest part: {part} {_gib(plan.hbm_bytes[part])}; {fix} "
    "(vlpt-plan --suggest searches these)"
  )


def format_table(plan) -> str:
  rows = [
    f"topology {plan.topology} x {plan.slices} slice(s): {plan.chips} {plan.chip.name} chips, "
    f"mesh {plan.mesh}",
    "per-chip HBM:",
  ]
  for part in ("parameters", "optimizer", "batch", "temporaries", "outputs"):
    rows.append(f"  {part:<12} {_gib(plan.hbm_bytes[part]):>14}")
  verdict = "fits" if plan.fits else "DOES NOT FIT"
  rows.append(
    f"  {'total':<12} {_gib(plan.hbm_bytes['total']):>14} of {_gib(plan.hbm_capacity_bytes)}: {verdict}"
  )
  if plan.loss_temporaries_bytes is not None:
    rows.append(f"  (the loss's temporaries: {_gib(plan.loss_temporaries_bytes)})")
  parts = ", ".join(f"{k} {_flop(v)}" for k, v in plan.flops_by_part.items())
  rows += [
    f"model FLOPs (training, no remat): {_flop(plan.model_flops_per_example)} per example ({parts}), "
    f"{_flop(plan.model_flops_per_step)} per step",
    f"roofline step at peak ({plan.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s per chip): "
    f"{plan.roofline_step_s * 1e3:,.3f} ms; examples/s at 40% MFU {plan.examples_per_s(0.4):,.0f}, "
    f"at 60% {plan.examples_per_s(0.6):,.0f}",
  ]
  if plan.collective_bytes:
    coll = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(plan.collective_bytes.items()))
    rows.append(f"collectives per chip per step (loop bodies once): {coll}")
  rows.append(f"compile: {plan.compile_s:.1f} s")
  rows += [f"note: {n}" for n in plan.notes]
  return "\n".join(rows)


def _steps(config, devices, num_slices: int):
  """Groups of alternative changes, in order of cost: the first applicable alternative of a
  group is kept (with the groups before it) and the next group is tried on top of it."""
  from vlpt.sharding import MESH_AXES, resolve_mesh_shape

  sizes = dict(zip(MESH_AXES, resolve_mesh_shape(dict(config.mesh), len(devices))))
  per_slice = len(devices) // num_slices // sizes["tensor"]
  # FSDP over as much of a slice as divides the model's widths (the largest first)
  fsdp = [f for f in (per_slice >> i for i in range(per_slice.bit_length())) if f > sizes["fsdp"]]
  if fsdp:
    yield [{"mesh.data": -1, "mesh.fsdp": f} for f in fsdp if per_slice % f == 0]
  if config.loss.impl == "gather" and config.loss.name in ("softmax", "sigmoid"):
    yield [{"loss.impl": "ring"}]
  towers = ("image", "text") + (("decoder",) if config.model.name in ("coca", "locca") else ())
  for policy in REMAT_ORDER:
    yield [{f"model.{t}.remat": policy for t in towers}]
  for k in ACCUMULATION_ORDER:
    yield [{"accumulation_steps": k}]


def _apply(config, changes: dict):
  import copy

  from vlpt.config import set_path

  c = copy.deepcopy(config)
  with c.unlocked():
    for path, value in changes.items():
      set_path(c, path, value)
  return c


def _suggest(config, devices, base) -> int:
  from vlpt.errors import ConfigError
  from vlpt.train.plan import plan

  print(
    f"as given: {_gib(base.hbm_bytes['total'])} per chip (compile {base.compile_s:.0f} s)", flush=True
  )
  kept: dict[str, object] = {}
  for alternatives in _steps(config, devices, FLAGS.num_slices):
    for step in alternatives:
      changes = {**kept, **step}
      flags_text = " ".join(f"--config.{k}={v}" for k, v in changes.items())
      try:
        p = plan(_apply(config, changes), FLAGS.topology, num_slices=FLAGS.num_slices, devices=devices)
      except ConfigError as e:
        print(f"  {flags_text}: not applicable ({e})", flush=True)
        continue
      verdict = "fits" if p.fits else "does not fit"
      print(f"  {flags_text}: {_gib(p.hbm_bytes['total'])}, {verdict} (compile {p.compile_s:.0f} s)")
      if p.fits:
        print(f"cheapest setting that fits: {flags_text}")
        if FLAGS.json:
          print(json.dumps({**p.to_json(), "suggested": changes}, indent=1))
        return 0
      kept = changes
      break
  print("nothing tried fits: use more chips or a smaller batch", file=sys.stderr)
  return NOT_FIT_EXIT


def main() -> None:
  from vlpt.train.plan import NoCompiler, plan, topology_devices

  try:
    devices = topology_devices(FLAGS.topology, FLAGS.num_slices)
  except NoCompiler as e:
    print(f"vlpt: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  result = plan(FLAGS.config, FLAGS.topology, num_slices=FLAGS.num_slices, devices=devices)
  if FLAGS.suggest and not result.fits:
    sys.exit(_suggest(FLAGS.config, devices, result))
  print(json.dumps(result.to_json(), indent=1) if FLAGS.json else format_table(result), flush=True)
  if not result.fits:
    print(f"vlpt: {_advice(result)}", file=sys.stderr, flush=True)
    sys.exit(NOT_FIT_EXIT)


def run() -> None:
  # compile-only: JAX must never try to open a TPU (or wait for a TPU metadata server) here
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is opened: no lock needed
  os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
  os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
  flags.DEFINE_string("topology", None, "TPU topology: v5e:16x16, v5p:8x8x16, v4:2x2x4, v6e:4x4, ...")
  flags.DEFINE_integer("num_slices", 1, "Slices of that topology joined over the data-center network.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
  flags.DEFINE_bool("suggest", False, "If it does not fit, search for the cheapest setting that does.")
  flags.mark_flags_as_required(["topology"])
  run_main(main)


if __name__ == "__main__":
  run()
