"""Parameter placement checked on the arrays themselves: which device holds which slice.

Parameters are materialized the way the trainer does it (``jax.jit`` with ``out_shardings`` from
``vlpt.sharding.param_shardings``), then every ``addressable_shards`` entry is compared with the
layout the rules promise and with the same parameters initialized on one device.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from vlpt import sharding as S
from vlpt.models import build_model

TINY = dict(
  name="clip",
  embed_dim=32,
  image=dict(variant="micro/8", image_size=32),
  text=dict(variant="micro", vocab_size=50, context_length=8),
)
WIDTH = 64  # the towers' width (the 'embed' axis), as built from TINY


def _init():
  return nnx.state(build_model(TINY, nnx.Rngs(0)), nnx.Param).to_pure_dict()


@pytest.fixture(scope="module")
def single_device():
  """The parameters initialized on one device, as numpy arrays."""
  return jax.tree.map(np.asarray, jax.jit(_init)())


def _shardings(mesh, rules):
  abstract = nnx.state(nnx.eval_shape(lambda: build_model(TINY, nnx.Rngs(0))), nnx.Param)
  return S.param_shardings(abstract, mesh, rules).to_pure_dict()


def materialize(mesh_shape, rules=(), params=None):
  """(mesh, params placed by the rules): initialized under jit, or ``params`` moved by jit."""
  mesh = S.make_mesh(mesh_shape)
  rules = S.rules_from_config(rules)
  shardings = _shardings(mesh, rules)
  with S.activate(mesh, rules):
    if params is None:
      return mesh, jax.jit(_init, out_shardings=shardings)()
    return mesh, jax.jit(lambda p: p, out_shardings=shardings)(params)


def _coords(mesh):
  """device -> {mesh axis: coordinate}."""
  return {mesh.devices[idx]: dict(zip(mesh.axis_names, idx)) for idx in np.ndindex(mesh.devices.shape)}


def assert_placed(arr, want, mesh, split=None):
  """``arr`` on every mesh device; dim ``d`` cut into equal blocks along mesh axis ``split[d]``.

  Each device must hold exactly its block (by its coordinate on that mesh axis) with the values
  of ``want`` there; dims not in ``split`` are whole on every device.
  """
  split = split or {}
  coords = _coords(mesh)
  shards = arr.addressable_shards
  assert sorted(s.device.id for s in shards) == sorted(d.id for d in mesh.devices.flat)
  for shard in shards:
    block = []
    for dim, size in enumerate(want.shape):
      if dim in split:
        n = mesh.shape[split[dim]]
        assert size % n == 0
        start = coords[shard.device][split[dim]] * (size // n)
        block.append(slice(start, start + size // n))
      else:
        block.append(slice(0, size))
    data = np.asarray(shard.data)
    expected = want[tuple(block)]
    assert data.shape == expected.shape, (shard.device, data.shape, expected.shape)
    np.testing.assert_array_equal(data, expected)


def _leaves(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _device_bytes(params, device):
  return sum(
    s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards if s.device == device
  )


def test_data_parallel_holds_identical_full_copies(single_device):
  """mesh {data: 8}: every parameter is whole on each of the 8 devices and equal there."""
  mesh, params = materialize(dict(data=8), params=single_device)
  got, want = _leaves(params), _leaves(single_device)
  assert got.keys() == want.keys()
  for name, arr in got.items():
    assert_placed(arr, want[name], mesh)
  total = sum(x.nbytes for x in want.values())
  assert all(_device_bytes(params, d) == total for d in mesh.devices.flat)


def test_fsdp_splits_the_embed_axis_four_ways(single_device):
  """mesh {data: 2, fsdp: 4}, initialized under jit with out_shardings (the trainer's path).

  Every tensor with a width (embed) axis holds a distinct quarter of it on the devices of each
  fsdp coordinate, identical across the two data replicas; the quarters tile the parameter as
  initialized on one device. Norm parameters and the logit scale are whole everywhere.
  """
  mesh, params = materialize(dict(data=2, fsdp=4))
  p, want = params, single_device
  block = lambda tower, i: (
    p[tower]["transformer"]["blocks"][i],  # noqa: E731
    want[tower]["transformer"]["blocks"][i],
  )
  for tower in ("image", "text"):
    for i in (0, 1):
      got_b, want_b = block(tower, i)
      assert_placed(
        got_b["mlp"]["fc1"]["kernel"], want_b["mlp"]["fc1"]["kernel"], mesh, {0: "fsdp"}
      )  # [embed, mlp]
      assert_placed(
        got_b["mlp"]["fc2"]["kernel"], want_b["mlp"]["fc2"]["kernel"], mesh, {1: "fsdp"}
      )  # [mlp, embed]
      for name in ("query", "key", "value"):  # [embed, heads, head_dim]
        assert_placed(got_b["attn"][name], want_b["attn"][name], mesh, {0: "fsdp"})
      assert_placed(got_b["attn"]["out"], want_b["attn"]["out"], mesh, {2: "fsdp"})
      assert_placed(got_b["ln_1"]["scale"], want_b["ln_1"]["scale"], mesh)
    assert_placed(
      p[tower]["positional_embedding"], want[tower]["positional_embedding"], mesh, {1: "fsdp"}
    )
    assert_placed(p[tower]["proj"]["kernel"], want[tower]["proj"]["kernel"], mesh, {0: "fsdp"})
  assert_placed(p["text"]["token_embedding"], want["text"]["token_embedding"], mesh, {1: "fsdp"})
  assert_placed(p["image"]["patch_embed"], want["image"]["patch_embed"], mesh, {3: "fsdp"})
  assert_placed(p["logit_scale"], want["logit_scale"], mesh)
  # The quarters are distinct: the four fsdp coordinates of one data replica hold 4 different
  # slices whose concatenation is the whole kernel.
  kernel = p["text"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"]
  coords = _coords(mesh)
  replica = sorted(
    (coords[s.device]["fsdp"], np.asarray(s.data))
    for s in kernel.addressable_shards
    if coords[s.device]["data"] == 0
  )
  assert [c for c, _ in replica] == [0, 1, 2, 3]
  assert all(x.shape == (WIDTH // 4, 256) for _, x in replica)
  np.testing.assert_array_equal(
    np.concatenate([x for _, x in replica]),
    want["text"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"],
  )
  # Each device keeps little more than a quarter of the parameters (norms and biases whole).
  total = sum(x.nbytes for x in jax.tree.leaves(want))
  for device in mesh.devices.flat:
    assert _device_bytes(params, device) < 0.3 * total


@pytest.mark.parametrize(
  "rules,fc1_split", [((), {0: "fsdp", 1: "tensor"}), ((("mlp", None),), {0: "fsdp"})]
)
def test_tensor_parallel_layout_and_a_rules_override(single_device, rules, fc1_split):
  """mesh {data: 2, fsdp: 2, tensor: 2}: MLP and heads over tensor, width over fsdp; overriding
  the 'mlp' rule puts the MLP's hidden axis back whole on every device, same model code."""
  mesh, params = materialize(dict(data=2, fsdp=2, tensor=2), rules, params=single_device)
  got_b = params["image"]["transformer"]["blocks"][1]
  want_b = single_device["image"]["transformer"]["blocks"][1]
  assert_placed(got_b["mlp"]["fc1"]["kernel"], want_b["mlp"]["fc1"]["kernel"], mesh, fc1_split)
  assert_placed(
    got_b["mlp"]["fc1"]["bias"],
    want_b["mlp"]["fc1"]["bias"],
    mesh,
    {0: "tensor"} if 1 in fc1_split else {},
  )
  assert_placed(
    got_b["attn"]["out"], want_b["attn"]["out"], mesh, {0: "tensor", 2: "fsdp"}
  )  # [heads, head_dim, embed]
  assert_placed(got_b["ln_2"]["bias"], want_b["ln_2"]["bias"], mesh)
  assert_placed(params["logit_scale"], single_device["logit_scale"], mesh)
