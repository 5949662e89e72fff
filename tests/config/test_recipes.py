"""Recipes (configs/{clip,align,siglip,coca,lit}.py): every variant validates, docstrings match
docs/recipes.md, the LAMB/Adafactor optimizers, LiT's init_towers and the builtin:demo source;
slow tier: every ``:smoke`` variant trains and evaluates through the CLI."""

import importlib.util
import json
import math
import os
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from vlpt.config import default_config, load_config
from vlpt.errors import ConfigError, WeightsError
from vlpt.models import build_model
from vlpt.optim import FactoredMomentsState, build_optimizer
from vlpt.train.initialization import read_checkpoint as read_bundle
from vlpt.train.setup import build, initial_state
from vlpt.train.validation import validate
from vlpt.weights.builtin import BUILTINS
from vlpt.weights.formats import detect_format

from conftest import REPO
from e2e_utils import (
  cli,
  env_with_devices,
  eval_rows,
  export_random_model,
  run,
  train_losses,
  train_sentencepiece,
)

RECIPES = ("clip", "align", "siglip", "coca", "lit", "siglip2")
DOCS = os.path.join(REPO, "docs", "recipes.md")
# a reported result: one decimal (63.2); table numbers, sizes and hyperparameters do not match
RESULT = re.compile(r"(?<![\w.])\d{1,3}\.\d(?!\w|\.\d)")


def recipe(name):
  path = os.path.join(REPO, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"vlpt_recipe_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def placeholders(module):
  return {k: v for k, v in vars(module).items() if k.endswith("_PLACEHOLDER")}


def point_at_local_files(config, tmp_path):
  """The full configs' placeholders replaced by things that exist here."""
  config.data.train.source = "synthetic"
  if "vocab_path" in config.data.tokenizer:  # a WordPiece vocabulary (ALIGN's BERT tokenizer)
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo"]) + "\n")
    config.data.tokenizer.vocab_path = str(path)
  if "model_path" in config.data.tokenizer:  # a SentencePiece model (SigLIP's)
    config.data.tokenizer.model_path = train_sentencepiece(tmp_path)
  if config.init.checkpoint and not config.init.checkpoint.startswith("builtin:"):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "vlpt_model.json").write_text("{}")  # detect_format only looks for it
    config.init.checkpoint = str(ckpt)


@pytest.mark.parametrize("name", RECIPES)
def test_every_variant_builds_and_validates(name, tmp_path):
  module = recipe(name)
  holders = placeholders(module)
  assert holders and "smoke" in module.VARIANTS
  for variant in (None, *module.VARIANTS):
    if variant in getattr(module, "DEMO_ABLATIONS", ()):  # modifiers of the demo run
      variant = f"demo,{variant}"
    config = module.get_config(variant)
    if variant == "smoke":
      validate(config, num_devices=8)  # runs as is: built-in data, no files needed
      assert config.data.train.source == "synthetic" and config.total_steps <= 30
      continue
    if variant and "demo" in variant:  # SigLIP 2's demo runs: built-in data too
      validate(config, num_devices=8)
      continue
    # unset placeholders fail validation naming themselves
    with pytest.raises(ConfigError) as e:
      validate(config, num_devices=8)
    assert any(str(v).removeprefix("wds:").split("{")[0] in str(e.value) for v in holders.values()), str(
      e.value
    )
    point_at_local_files(config, tmp_path)
    validate(config, num_devices=8)
  with pytest.raises(ValueError, match="unknown"):
    module.get_config("nope")


def test_recipe_settings_follow_the_papers():
  clip = recipe("clip").get_config("L14")
  assert (clip.batch_size, clip.total_steps, clip.optimizer.lr) == (32768, 390625, 4e-4)
  assert clip.optimizer.weight_decay == 0.2 and clip.optimizer.warmup_steps == 2000
  assert math.isclose(math.exp(clip.model.init_logit_scale), 1 / 0.07)

  align = recipe("align").get_config(None)
  assert (align.optimizer.name, align.optimizer.lr, align.optimizer.weight_decay) == ("lamb", 1e-3, 1e-5)
  assert align.loss.label_smoothing == 0.1 and align.model.init_logit_scale == 0.0
  assert (align.model.text.causal, align.model.text.pool, align.model.text.mask_padding) == (
    False,
    "first",
    True,
  )
  assert recipe("align").get_config("adamw").optimizer.name == "adamw"

  siglip = recipe("siglip").get_config("So400m14")
  assert siglip.loss.name == "sigmoid" and siglip.model.init_logit_bias == -10.0
  assert math.isclose(math.exp(siglip.model.init_logit_scale), 10.0)
  assert siglip.data.tokenizer.context_length == 64 and siglip.model.embed_dim == 1152

  coca = recipe("coca").get_config("large")
  assert coca.model.name == "coca" and coca.loss.caption_weight == 2.0
  assert coca.model.image.pool == "coca" and coca.model.image.pooler_queries == 257
  assert coca.batch_size * coca.total_steps == 500_000 * 65_536

  siglip2 = recipe("siglip2")
  s2 = siglip2.get_config("g16")
  assert (s2.batch_size, s2.total_steps, s2.optimizer.warmup_steps) == (32768, 1220703, 20000)
  assert s2.data.tokenizer.context_length == 64 and s2.data.tokenizer.lower_case
  assert s2.model.image.variant == "g-opt/16" and s2.model.text.variant == "So400m"
  assert s2.model.image.scan and s2.model.text.scan  # large towers
  # Sec. 2.2: the LocCa decoder at every size (the text tower's shape, half its layers), chunked
  assert (s2.model.name, s2.model.decoder.variant, s2.model.decoder.depth) == ("locca", "So400m", 13)
  assert s2.loss.decoder_chunk_length == 16 and s2.loss.decoder_weight == 1.0
  b16 = siglip2.get_config("B16").model.text  # SigLIP's text tower: the image tower's dimensions
  assert (b16.width, b16.depth, b16.heads, b16.mlp_dim) == (768, 12, 12, 3072)
  naflex = siglip2.get_config("naflex")
  assert naflex.model.image.naflex and naflex.model.name == "clip"  # vlpt's decoder: fixed size
  demo, sigmoid = siglip2.get_config("demo"), siglip2.get_config("demo,sigmoid")
  assert "dense_probe" in demo.eval.datasets.heldout.tasks
  assert (demo.seed, demo.total_steps, demo.batch_size) == (
    sigmoid.seed,
    sigmoid.total_steps,
    sigmoid.batch_size,
  )
  with pytest.raises(ValueError, match="ablations of the demo"):
    siglip2.get_config("sigmoid")

  lit = recipe("lit").get_config(None)
  assert lit.init.lock_towers == ("image",) and lit.init.towers == ("image",)
  assert recipe("lit").get_config("smoke").init.checkpoint == "builtin:demo"


def docs_section(name):
  with open(DOCS) as f:
    text = f.read()
  match = re.search(rf"^## [^\n]*`configs/{name}\.py`[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
  assert match, f"docs/recipes.md has no section for configs/{name}.py"
  return match.group(1)


def reported_block(docstring):
  match = re.search(r"^Reported.*?(?=\n\s*\n)", docstring, re.M | re.S)
  assert match, "the docstring has no 'Reported' paragraph"
  return match.group(0)


@pytest.mark.parametrize("name", RECIPES)
def test_docstring_citation_and_numbers_match_docs(name):
  module = recipe(name)
  doc = module.__doc__
  assert re.fullmatch(r"arXiv:\d{4}\.\d{4,5}", module.PAPER)
  assert module.PAPER in doc and re.search(r"\b20\d\d\b", doc) and "Table" in doc
  assert re.findall(r"arXiv:\d{4}\.\d{4,5}", doc)[0] == module.PAPER  # the paper cited first
  section = docs_section(name)
  assert module.PAPER in section
  reported = set(RESULT.findall(reported_block(doc)))
  table = section.split("### Reported numbers", 1)[1].split("\n## ", 1)[0]
  documented = set(RESULT.findall(table))
  assert reported, "no reported numbers parsed from the docstring"
  assert reported == documented, (
    f"docstring only: {sorted(reported - documented)}; "
    f"docs/recipes.md only: {sorted(documented - reported)}"
  )


# ---- optimizers -------------------------------------------------------------------------------


def _opt_config(name, **optimizer):
  c = default_config()
  c.total_steps = 10
  c.optimizer.name = name
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.update(optimizer)
  return c


def test_adafactor_first_step_is_the_sign_of_a_rank_one_gradient():
  # with decay 0 at step 1 the factored estimate of g^2 is exact for rank-1 g^2, so the
  # update is -lr * g / |g|
  a, b = np.linspace(0.5, 2.0, 64), np.linspace(-1.0, 3.0, 48) + 0.05
  params = {"w": np.zeros((64, 48), np.float32), "v": np.zeros((5,), np.float32)}
  grads = {"w": np.outer(a, b).astype(np.float32), "v": np.array([1, -2, 3, -4, 5], np.float32)}
  tx = build_optimizer(_opt_config("adafactor", lr=0.1, b1=0.0, weight_decay=0.0), params)
  state = tx.init(params)
  factored = [
    s
    for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, FactoredMomentsState))
    if isinstance(s, FactoredMomentsState)
  ][0]
  assert {factored.v_row["w"].shape, factored.v_col["w"].shape} == {(64,), (48,)}
  assert factored.v["w"].shape == (1,) and factored.v["v"].shape == (5,)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * np.sign(grads["w"]), rtol=1e-5)
  np.testing.assert_allclose(updates["v"], -0.1 * np.sign(grads["v"]), rtol=1e-5)


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor"])
def test_weight_decay_mask_and_freezing_hold_for_every_optimizer(name):
  params = {
    "image": {"kernel": np.ones((4, 4), np.float32)},
    "text": {"kernel": np.ones((4, 4), np.float32), "bias": np.ones((4,), np.float32)},
  }
  config = _opt_config(name, lr=0.1, weight_decay=0.5)
  config.init.lock_towers = ("image",)
  tx = build_optimizer(config, params)
  state = tx.init(params)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, state = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  assert np.all(np.asarray(new["text"]["kernel"]) < 1.0)  # decayed
  np.testing.assert_array_equal(new["text"]["bias"], 1.0)  # no_decay: "bias"
  np.testing.assert_array_equal(new["image"]["kernel"], 1.0)  # locked
  masked = optax.MaskedNode
  frozen_state = [
    x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, masked)) if isinstance(x, masked)
  ]
  assert frozen_state, "the locked tower should hold no optimizer state"


def test_adafactor_state_on_an_fsdp_mesh_replicates_only_factored_statistics():
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.optimizer.name = "adafactor"
  config.optimizer.warmup_steps = 0
  config.mesh.data, config.mesh.fsdp = 4, 2
  setup = build(config)
  state = initial_state(setup)
  kinds = {"v_row": [], "ema": []}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
    name = jax.tree_util.keystr(path)
    for kind in kinds:
      if f".{kind}" in name:
        kinds[kind].append(leaf.sharding.is_fully_replicated)
  assert kinds["v_row"] and all(kinds["v_row"])  # small statistics: replicated
  assert kinds["ema"] and not all(kinds["ema"])  # momentum: sharded like the parameters
  # (Adafactor steps run in the slow tier: configs/{siglip,coca,lit}.py:smoke)


# ---- LiT: init_towers, lock validation, builtin source -------------------------------------------


def test_init_towers_loads_only_the_image_tower(tmp_path):
  source = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  _, flat = export_random_model(source, tmp_path / "pre")
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.model.text.variant = "demo"  # another text architecture than the checkpoint's
  config.init.checkpoint = str(tmp_path / "pre")
  config.init.towers = ("image",)
  config.init.lock_towers = ("image",)
  setup = build(config)
  params = jax.device_get(initial_state(setup).params)
  loaded = flat_params_of(params["image"], "image.")
  assert loaded.keys() == {k for k in flat if k.startswith("image.")}
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, flat[key])
  # the rest is the random init a run without init_from draws (initial_state's key split)
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  plain = nnx.state(build_model(setup.model_config, nnx.Rngs(params=init_key)), nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(params["text"]), jax.tree.leaves(plain["text"])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(params["logit_scale"], plain["logit_scale"])


def flat_params_of(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_params_of(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


def test_locking_a_random_tower_needs_the_explicit_flag(tmp_path):
  config = load_config(os.path.join(REPO, "configs", "demo.py:tiny"))
  config.init.lock_towers = ("image",)
  with pytest.raises(ConfigError, match="randomly initialized image tower.*allow_random_lock"):
    validate(config, num_devices=8)
  config.init.allow_random_lock = True
  validate(config, num_devices=8)
  config.init.allow_random_lock = False
  config.init.checkpoint = "builtin:demo"
  config.init.towers = ("text",)
  with pytest.raises(ConfigError, match="does not load it"):
    validate(config, num_devices=8)
  config.init.towers = ("vision",)
  with pytest.raises(ConfigError, match=r"config.init.towers=\('vision',\): choose among"):
    validate(config, num_devices=8)
  config.init.checkpoint = None
  config.init.lock_towers = ()
  config.init.towers = ("image",)
  with pytest.raises(ConfigError, match="needs config.init.checkpoint"):
    validate(config, num_devices=8)


def test_builtin_source_is_validated_by_name_without_training(tmp_path, monkeypatch):
  monkeypatch.setenv("VLPT_CACHE", str(tmp_path / "cache"))
  assert detect_format("builtin:demo") == "builtin" and "demo" in BUILTINS
  with pytest.raises(WeightsError, match="unknown built-in model"):
    detect_format("builtin:nope")
  validate(recipe("lit").get_config("smoke"), num_devices=8)
  assert not (tmp_path / "cache").exists()  # trained on first read only


# ---- slow: every :smoke variant through the CLI -------------------------------------------------


# The :smoke variants of these recipes learn within their 20 steps of 32. clip's and align's do
# not (measured 2026-11-30: clip's loss sits at ln(batch), collapsed, even at 60 steps of 64 with
# lr 3e-3; align's falls 0.2%): an open finding, so their runs are checked to finish only.
LEARNS_IN_SMOKE = ("siglip", "coca", "lit")


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_smoke_variant_trains_and_evaluates(name, tmp_path, cli_env, monkeypatch):
  env = env_with_devices(cli_env, 8)
  env["VLPT_CACHE"] = str(tmp_path / "cache")  # LiT: builtin:demo is trained here, from scratch
  workdir = tmp_path / "run"
  proc = run(
    cli("vlpt.cli.train", workdir, config=os.path.join(REPO, "configs", f"{name}.py:smoke")),
    env,
    timeout=600,
  )
  assert "step     20/20" in proc.stdout
  rows = eval_rows(workdir)
  assert rows and rows[-1]["step"] == 20
  top1 = rows[-1]["heldout/zeroshot/top1"]
  assert top1 is not None and np.isfinite(top1)
  losses = train_losses(workdir)
  assert sorted(losses) == [5, 10, 15, 20]
  if name in LEARNS_IN_SMOKE:  # it learned: the objective fell over 20 steps (measured 43-52%)
    assert losses[20] < 0.8 * losses[5], losses
  else:  # see LEARNS_IN_SMOKE
    assert all(np.isfinite(v) for v in losses.values()), losses
  if name != "lit":
    return
  assert "builtin:demo is not cached yet" in proc.stderr
  cache = tmp_path / "cache" / "builtin" / "demo"
  with open(cache / "builtin.json") as f:
    meta = json.load(f)
  assert meta["metrics"]["heldout/zeroshot/top1"] > 2 / 24  # a useful tower (chance: 1/24)
  monkeypatch.setenv("VLPT_CACHE", str(tmp_path / "cache"))
  pretrained = read_bundle("builtin:demo")
  tuned = read_bundle(str(workdir))  # the LiT run's last checkpoint
  image = sorted(k for k in pretrained.params if k.startswith("image."))
  assert image and image == sorted(k for k in tuned.params if k.startswith("image."))
  for key in image:  # the locked tower did not move
    np.testing.assert_array_equal(tuned.params[key], pretrained.params[key])
  # the text tower is the recipe's own (demo-sized), not the checkpoint's (micro)
  assert tuned.model["text"]["variant"] == "demo" and pretrained.model["text"]["variant"] == "micro"
  assert not any(
    k.startswith("text.")
    and k in tuned.params
    and tuned.params[k].shape == pretrained.params[k].shape
    and np.array_equal(tuned.params[k], pretrained.params[k])
    for k in pretrained.params
  )
