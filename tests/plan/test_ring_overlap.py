"""The ring loss compiled for TPU overlaps each chunk's transfer with the tiles' compute."""

import functools
import os
import re

import pytest

from conftest import require

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def computations(hlo: str) -> dict[str, list[str]]:
  """Optimized HLO text -> {computation name: its instruction lines}."""
  out, name = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%(\S+) \(", line)
    if m:
      name = m.group(1)
      out[name] = []
    elif name and line.startswith("  "):
      out[name].append(line.strip())
  return out


def transfers_and_work_between(lines: list[str]) -> list[tuple[str, bool]]:
  """(the start's result type, whether a loop, matmul or fusion runs before its done) per async
  collective-permute of a computation."""
  out = []
  for i, line in enumerate(lines):
    m = re.match(r"%(collective-permute-start[.\d]*) = \(([^)]*)\)", line)
    if not m:
      continue
    done = next(
      j for j in range(i + 1, len(lines)) if f"collective-permute-done(%{m.group(1)})" in lines[j]
    )
    between = lines[i + 1 : done]
    work = any(re.search(r"\b(while|convolution|fusion)\(", x) for x in between)
    out.append((m.group(2), work))
  return out


@pytest.mark.parametrize("name", ["softmax", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_ring_transfers_overlap_the_tile_compute_on_tpu(name):
  """Each hop issues its chunk's ppermute before its tiles (vlpt.losses.ring._circle). XLA's TPU
  scheduler hoists an independent transfer anyway: this test passes with the send written after
  the compute too (checked once by hand), so it guards the compiled overlap, not the source order."""
  require("libtpu")
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from vlpt import sharding as S
  from vlpt.losses.ring import sigmoid_ring_sharded, softmax_ring_sharded

  devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
  mesh = S.make_mesh({"data": -1}, devices)
  ring = {"softmax": softmax_ring_sharded, "sigmoid": sigmoid_ring_sharded}[name]
  fn = functools.partial(ring, tile_size=128, precision="bf16")
  spec = P(S.BATCH_AXES)
  loss = jax.shard_map(
    lambda i, t, s, b: fn(i, t, s, b, S.BATCH_AXES)[0],
    mesh=mesh,
    in_specs=(spec, spec, P(), P()),
    out_specs=P(),
  )
  emb = jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=NamedSharding(mesh, spec))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  hlo = step.lower(emb, emb, scalar, scalar).compile().as_text()
  assert "collective-permute(" not in hlo  # every transfer is asynchronous
  found = [t for lines in computations(hlo).values() for t in transfers_and_work_between(lines)]
  # the 128-row bf16 chunks of 256-dim embeddings (forward circle, and both backward circles)
  chunks = [work for shape, work in found if "bf16[128,256]" in shape]
  assert len(chunks) >= 3, found
  assert all(chunks), found  # each chunk's transfer is in flight while the tiles are computed
