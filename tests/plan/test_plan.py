"""vlpt-plan: the real train step compiled for TPU topologies by libtpu on this CPU machine."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_environment, require

# libtpu must not look for a TPU, a metadata server or another process's lock (the CLI sets these
# itself; the in-process tests need them before the first topology)
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

DEMO = os.path.join(REPO, "configs", "demo.py:tiny")
JSON_KEYS = {
  "topology",
  "chips",
  "slices",
  "fits",
  "hbm_capacity_bytes",
  "hbm_bytes",
  "model_flops_per_step",
  "model_flops_per_example",
  "roofline_step_s",
  "compile_s",
}
HBM_KEYS = {"parameters", "optimizer", "batch", "temporaries", "outputs", "total"}


@pytest.fixture(scope="module")
def plan_module():
  require("libtpu")
  from vlpt.train import plan

  return plan


def demo_config(**changes):
  from vlpt.config import load_config, set_path

  c = load_config(DEMO)
  with c.unlocked():
    for path, value in changes.items():
      set_path(c, path, value)
  return c


def run_plan(*args, timeout=600):
  return subprocess.run(
    [sys.executable, "-m", "vlpt.cli.plan", *args],
    capture_output=True,
    text=True,
    env=cli_environment(),
    cwd=REPO,
    timeout=timeout,
  )


def last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


@pytest.mark.parametrize(
  "topology,chips,chip",
  [("v5e:2x2", 4, "v5e"), pytest.param("v5p:2x2x2", 8, "v5p", marks=pytest.mark.slow)],
)
def test_small_config_compiles_for_a_topology(plan_module, topology, chips, chip):
  p = plan_module.plan(demo_config(batch_size=64), topology)
  assert (p.chips, p.chip.name, p.slices) == (chips, chip, 1)
  assert p.mesh == {"data": chips, "fsdp": 1, "tensor": 1}
  assert p.fits and p.hbm_capacity_bytes == {"v5e": 16, "v5p": 95}[chip] * 1024**3
  hbm = p.hbm_bytes
  assert set(hbm) == HBM_KEYS and all(v >= 0 for v in hbm.values())
  # the state and batch are arguments: everything the executable holds at once includes them
  assert hbm["parameters"] > 0 and hbm["optimizer"] >= 2 * hbm["parameters"]  # AdamW: mu, nu
  assert hbm["total"] >= hbm["parameters"] + hbm["optimizer"] + hbm["batch"]
  # 64 examples of 32x32x3 uint8 and 16 int32 tokens, split over the chips
  assert hbm["batch"] == 64 // chips * (32 * 32 * 3 + 16 * 4)
  assert p.model_flops_per_step == pytest.approx(64 * p.model_flops_per_example)
  assert p.roofline_step_s == pytest.approx(p.model_flops_per_step / (chips * p.chip.peak_bf16_flops))
  assert p.compile_s > 0 and p.xla_flops_per_device > 0
  assert "all-reduce" in p.collective_bytes  # data parallelism: the gradient's all-reduce


def test_parameter_bytes_per_chip_fall_as_one_over_fsdp(plan_module):
  """The shards of the state the compiled step takes (built, not compiled: the compile adds
  nothing to the parameters' layout, and three compiles would take minutes)."""
  from vlpt.train.setup import build

  devices = plan_module.topology_devices("v5p:2x2x2")
  params, moments = {}, {}
  for fsdp in (1, 2, 8):
    c, _ = plan_module.plan_config(demo_config(batch_size=64, **{"mesh.data": -1, "mesh.fsdp": fsdp}))
    setup = build(c, devices)
    assert dict(setup.mesh.shape) == {"data": 8 // fsdp, "fsdp": fsdp, "tensor": 1}
    params[fsdp] = plan_module._shard_bytes(setup.abstract_state.params)
    moments[fsdp] = plan_module._shard_bytes(setup.abstract_state.opt_state)
  # every matrix has an "embed" dimension split over fsdp; only vectors over other axes (norms,
  # biases of the wide layers, the temperature) stay whole, a few percent of the demo's bytes
  assert params[2] / params[1] == pytest.approx(1 / 2, rel=0.1)
  assert params[8] / params[1] == pytest.approx(1 / 8, rel=0.3)
  assert params[8] < params[2] < params[1]
  assert moments[8] / moments[1] == pytest.approx(params[8] / params[1], rel=0.05)  # moments follow


TOWER = dict(width=256, depth=2, heads=2, mlp_dim=1024, act="gelu")
FLOP_MODELS = {
  "clip": {
    "model.image": dict(variant="S/8", pool="token", **TOWER),
    "model.text": dict(variant="S", vocab_size=None, context_length=None, **TOWER),
  },
  "siglip": {  # MAP pooling, no class token, a bidirectional text tower read at its last token
    "model.image": dict(
      variant="S/8", pool="map", class_token=False, patch_bias=True, ln_pre=False, proj=False, **TOWER
    ),
    "model.text": dict(
      variant="S", vocab_size=None, context_length=None, causal=False, pool="last", **TOWER
    ),
    "loss.name": "sigmoid",
    "model.init_logit_bias": -10.0,
  },
  "lit": {  # a locked image tower: forward only
    "model.image": dict(variant="S/8", pool="token", **TOWER),
    "model.text": dict(variant="S", vocab_size=None, context_length=None, **TOWER),
    "init.lock_towers": ("image",),
    "init.allow_random_lock": True,
  },
}


@pytest.mark.parametrize(
  "kind", ["clip", *(pytest.param(k, marks=pytest.mark.slow) for k in ("siglip", "lit", "coca"))]
)
def test_analytic_flops_match_xla_cost_analysis_of_an_unscanned_model(plan_module, kind):
  """XLA's cost analysis counts every operation of the compiled step (matmuls, and also norms,
  GELU, softmax and the optimizer), so it checks the analytic matmul count independently. The
  towers are unscanned (a scan body would be counted once) and 256 wide, so the elementwise work
  stays small; measured ratios XLA / analytic: 1.019 (clip), 1.018 (siglip), 1.037 (lit),
  1.017 (coca, 384 wide). One CPU device: TPU cost analysis counts the padded (8, 128) tiles
  (1.057 for 64-wide attention heads), not the model's FLOPs."""
  import jax

  if kind == "coca":
    wide = dict(TOWER, width=384)  # (CoCa reads the S text size's 6 heads for its width check)
    changes = {
      "model.image": dict(variant="S/8", pool="coca", pooler_queries=17, pooler_heads=2, **wide),
      "model.text": dict(variant="S", vocab_size=None, context_length=None, **wide),
      "model.decoder": dict(variant="S", **{k: wide[k] for k in ("width", "depth", "heads", "mlp_dim")}),
      "model.embed_dim": 384,
    }
    c = demo_config(**changes)
    with c.unlocked():
      c.model.name = "coca"
  else:
    c = demo_config(**{"model.embed_dim": 256, **FLOP_MODELS[kind]})
  with c.unlocked():
    c.batch_size = c.eval.batch_size = 64
    c.data.image_size = 64
    c.data.tokenizer.context_length = 32
  setup, compiled, _ = plan_module.compile_train_step(c, jax.devices()[:1])
  analytic = plan_module.model_flops(setup)["total"] * c.batch_size
  assert compiled.cost_analysis()["flops"] == pytest.approx(analytic, rel=0.05)


def test_without_libtpu_one_line_says_how_to_install_it(plan_module, monkeypatch):
  monkeypatch.setattr(plan_module.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(plan_module.NoCompiler, match=r'pip install "vlpt\[tpu\]" \(or "jax\[tpu\]==0\.'):
    plan_module.topology_devices("v5e:2x2")


def test_bad_topology_is_one_line_and_exit_2():
  require("libtpu")
  for topology, expected in (("v5e-2x2", "expected e.g. v5e:16x16"), ("v9:2x2", "libtpu refused it")):
    out = run_plan("--config", DEMO, "--topology", topology)
    assert out.returncode == 2, out.stderr[-2000:]
    assert last_line(out.stderr).startswith(f"vlpt: error: --topology '{topology}': ")
    assert expected in last_line(out.stderr)


def test_json_keys_and_fits_exit_0():
  require("libtpu")
  out = run_plan("--config", DEMO, "--topology", "v5e:2x2", "--json")
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout)
  assert JSON_KEYS <= set(result) and set(result["hbm_bytes"]) == HBM_KEYS
  assert (result["topology"], result["chips"], result["slices"], result["fits"]) == (
    "v5e:2x2",
    4,
    1,
    True,
  )
  assert result["hbm_capacity_bytes"] == 16 * 1024**3
  assert result["hbm_bytes"]["total"] <= result["hbm_capacity_bytes"]


# a 50M-word text vocabulary: 12.8 GB of fp32 embeddings (3x that with AdamW's moments) and their
# dense gradient, on a v5e chip of 16 GiB; quick to compile (the embedding is a gather). The TPU
# compiler itself refuses the program (its temporaries alone need 59.62G): the plan reports that.
HUGE_VOCAB = "--config.model.text.vocab_size=50000000"


def test_oversized_config_exits_3_naming_the_largest_part():
  require("libtpu")
  out = run_plan("--config", DEMO, "--topology", "v5e:2x2", HUGE_VOCAB, "--json")
  assert out.returncode == 3, out.stderr[-2000:]
  result = json.loads(out.stdout)
  hbm = result["hbm_bytes"]
  assert result["fits"] is False and hbm["total"] > result["hbm_capacity_bytes"]
  assert hbm["parameters"] == pytest.approx(50e6 * 64 * 4, rel=0.01)  # the embedding dominates
  assert hbm["optimizer"] == pytest.approx(2 * hbm["parameters"], rel=0.01)
  assert hbm["temporaries"] > 16 * 1024**3 and any("TPU compiler" in n for n in result["notes"])
  line = last_line(out.stderr)
  assert line.startswith("vlpt: does not fit: ") and "per chip > 16.00 GiB (v5e)" in line
  assert "largest part: temporaries" in line and "remat" in line and "accumulation_steps" in line


@pytest.mark.slow
def test_suggest_finds_fsdp_for_an_oversized_embedding():
  require("libtpu")
  out = run_plan("--config", DEMO, "--topology", "v5e:2x2", HUGE_VOCAB, "--suggest")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "cheapest setting that fits: --config.mesh.data=-1 --config.mesh.fsdp=4" in out.stdout


def _torus_distance(a, b, shape):
  return sum(min(abs(x - y), n - abs(x - y)) for x, y, n in zip(a, b, shape))


def test_ring_neighbours_on_the_mesh_are_torus_neighbours(plan_module):
  """On v5e:4x4 (a 2D torus) the data axis, which the ring loss walks, visits the chips so that
  consecutive ones, and the last and first, are one link apart; the plain reshape of the devices
  by id (vlpt's layout off TPU) is not."""
  import numpy as np

  from vlpt import sharding as S

  devices = plan_module.topology_devices("v5e:4x4")
  ring = list(S.make_mesh({"data": -1}, devices).devices[:, 0, 0])
  hops = [_torus_distance(a.coords, b.coords, (4, 4, 1)) for a, b in zip(ring, ring[1:] + ring[:1])]
  assert hops == [1] * 16
  plain = list(np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id))))
  plain_hops = [
    _torus_distance(a.coords, b.coords, (4, 4, 1)) for a, b in zip(plain, plain[1:] + plain[:1])
  ]
  assert max(plain_hops) > 1


def test_multi_slice_mesh_puts_only_the_data_axis_across_slices(plan_module):
  from vlpt import sharding as S

  devices = plan_module.topology_devices("v5e:2x2", num_slices=2)
  assert S.num_slices(devices) == 2
  mesh = S.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, devices)
  slices = [{d.slice_index for d in row.flat} for row in mesh.devices]
  assert slices == [{0}, {1}]  # every fsdp group within one slice; data spans the two
  with pytest.raises(ValueError, match="data=1 must be a multiple of the 2 slices"):
    S.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, devices)
  with pytest.raises(ValueError, match="dcn_data=4 but the devices form 2 slice"):
    S.make_mesh({"data": 8, "dcn_data": 4}, devices)


def test_a_mesh_that_does_not_divide_a_width_is_a_config_error(plan_module):
  """The demo's attention has 2 heads: tensor=4 cannot split them (one line, not a traceback)."""
  from vlpt.errors import ConfigError

  c = demo_config(batch_size=64, **{"mesh.data": 4, "mesh.tensor": 4})
  with pytest.raises(
    ConfigError,
    match=r"config.mesh: parameter \S+ \(64, 2, 32\) has 2 along dimension 1, which tensor=4",
  ):
    plan_module.plan(c, "v5e:4x4")


@pytest.mark.parametrize(
  "recipe,scanned",
  [
    ("clip.py:B16", ()),
    ("clip.py:L14", ("image", "text")),
    ("siglip.py:So400m14", ("image", "text")),
    ("lit.py:L14", ("image",)),
    ("coca.py:large", ("image",)),
  ],
)
def test_large_towers_scan_and_remat_by_default(recipe, scanned):
  from vlpt.config import load_config

  c = load_config(os.path.join(REPO, "configs", recipe))
  for tower in ("image", "text"):
    want = (True, "dots_no_batch") if tower in scanned else (None, None)
    assert (c.model[tower].get("scan"), c.model[tower].get("remat")) == want, tower
  with c.unlocked():  # a recipe's own choice is kept: the default applies to unset keys only
    c.model.image.remat = "full"
  from vlpt.config import large_tower_defaults

  large_tower_defaults(c)
  assert c.model.image.remat == "full"
