"""Model zoo in training: CoCa (losses, generation), LiT locking, patch dropout, init_from."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt.config import load_config
from vlpt.errors import ConfigError
from vlpt.models import build_model
from vlpt.models.generation import _filter_logits, generate
from vlpt.train.evaluation import restore
from vlpt.train.setup import build, initial_state
from vlpt.weights.state import flat_params

from conftest import REPO
from e2e_utils import cli, env_with_devices, export_random_model, metrics, one_train_step, run

COCA = dict(
  name="coca",
  embed_dim=32,
  image=dict(variant="micro/8", image_size=32, pooler_queries=5, pooler_heads=2),
  text=dict(variant="micro", vocab_size=50, context_length=12, width=32, heads=2),
  decoder=dict(width=32, heads=2, depth=2, vocab_size=50, context_length=12),
)
IMAGES = np.random.RandomState(0).randn(3, 32, 32, 3).astype(np.float32)
SOT, EOT = 48, 49


def demo_config(variant="tiny"):
  return load_config(os.path.join(REPO, "configs", f"demo.py:{variant}"))


@pytest.fixture(scope="module")
def coca():
  return build_model(COCA, nnx.Rngs(0))


def _greedy_without_cache(model, images, max_len):
  """Greedy decoding by recomputing the whole prefix every step (teacher forcing, no cache).

  The ids are padded to ``max_len`` throughout, so one compiled program serves every step: the
  decoder is causal, so the logits at position i read only the prefix up to i.
  """
  _, tokens = model.image_features(images)
  teacher_forced = nnx.jit(lambda m, ids, tokens: m.caption_logits(ids, tokens)[1])
  ids = np.zeros((len(images), max_len), np.int32)
  ids[:, 0] = SOT
  for i in range(max_len - 1):
    logits = teacher_forced(model, jnp.asarray(ids), tokens)
    ids[:, i + 1] = np.asarray(jnp.argmax(logits[:, i], -1))
  return ids


def _log_prob(model, images, ids):
  """Sum of token log-probs up to and including the first EOT (teacher forcing)."""
  _, tokens = model.image_features(images)
  _, logits, labels = model.caption_logits(jnp.asarray(ids), tokens)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[..., None], -1)[..., 0]
  keep = jnp.cumsum(labels == EOT, axis=1) - (labels == EOT) == 0
  return np.asarray(jnp.sum(jnp.where(keep, logp, 0.0), axis=1))


def test_kv_cache_greedy_equals_recomputation(coca):
  ids = np.asarray(generate(coca, IMAGES, max_len=10, sot_id=SOT, eot_id=EOT))
  ref = _greedy_without_cache(coca, IMAGES, 10)
  after_eot = np.cumsum(ref == EOT, axis=1) - (ref == EOT) > 0
  np.testing.assert_array_equal(ids, np.where(after_eot, 0, ref))
  assert (ids[:, 0] == SOT).all()


def test_beam_and_sampling_against_greedy(coca):
  greedy = np.asarray(generate(coca, IMAGES, max_len=10, sot_id=SOT, eot_id=EOT))
  one_beam = generate(
    coca, IMAGES, max_len=10, sot_id=SOT, eot_id=EOT, method="beam", num_beams=1, length_penalty=0.0
  )
  np.testing.assert_array_equal(one_beam, greedy)
  top1 = generate(
    coca, IMAGES, max_len=10, sot_id=SOT, eot_id=EOT, method="sample", top_k=1, rng=jax.random.key(3)
  )
  np.testing.assert_array_equal(top1, greedy)
  # with as many beams as the vocabulary, two decoding steps are searched exhaustively
  beam = np.asarray(
    generate(
      coca, IMAGES, max_len=3, sot_id=SOT, eot_id=EOT, method="beam", num_beams=50, length_penalty=0.0
    )
  )
  _, tokens = coca.image_features(IMAGES)
  for i in range(len(IMAGES)):
    prefixes = jnp.stack([jnp.full((50,), SOT), jnp.arange(50), jnp.zeros(50, int)], 1)
    _, logits, _ = coca.caption_logits(prefixes.astype(jnp.int32), jnp.repeat(tokens[i : i + 1], 50, 0))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))  # [first token, position, vocab]
    total = logp[:, 0, :][0][:, None] + logp[:, 1, :]  # [t1, t2]
    total[EOT, :] = logp[0, 0, EOT]  # a caption ending at once scores its EOT alone
    t1, t2 = np.unravel_index(np.argmax(total), total.shape)
    assert tuple(beam[i]) == (SOT, t1, 0 if t1 == EOT else t2)
  a = generate(
    coca,
    IMAGES,
    max_len=10,
    sot_id=SOT,
    eot_id=EOT,
    method="sample",
    temperature=2.0,
    rng=jax.random.key(1),
  )
  b = generate(
    coca,
    IMAGES,
    max_len=10,
    sot_id=SOT,
    eot_id=EOT,
    method="sample",
    temperature=2.0,
    rng=jax.random.key(1),
  )
  np.testing.assert_array_equal(a, b)  # deterministic given the key
  with pytest.raises(ValueError, match="rng"):
    generate(coca, IMAGES, max_len=4, sot_id=SOT, eot_id=EOT, method="sample")


def test_top_k_top_p_filtering():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda out: list(np.asarray(out[0] > -1e30))  # noqa: E731
  assert kept(_filter_logits(logits, 2, None)) == [True, True, False, False]
  assert kept(_filter_logits(logits, None, 0.7)) == [True, True, False, False]
  assert kept(_filter_logits(logits, None, 0.5)) == [True, False, False, False]
  assert kept(_filter_logits(logits, None, 0.96)) == [True, True, True, True]


def test_coca_trains_both_loss_terms_fall(tmp_path, cli_env):
  workdir = tmp_path / "coca"
  run(
    cli(
      "vlpt.cli.train",
      workdir,
      "--config.total_steps=40",
      "--config.optimizer.lr=1e-3",
      "--config.checkpoint_every_steps=40",
      config=os.path.join(REPO, "configs", "demo.py:coca,tiny"),
    ),
    env_with_devices(cli_env, 8),
  )
  rows = [r for r in metrics(workdir) if "train/caption_loss" in r]
  first, last = rows[:5], rows[-5:]
  for key in ("train/caption_loss", "train/contrastive_loss"):
    before, after = np.mean([r[key] for r in first]), np.mean([r[key] for r in last])
    assert after < 0.8 * before, (key, before, after)
  final = [r for r in metrics(workdir) if "heldout/zeroshot/top1" in r][-1]
  assert final["step"] == 40  # the demo's CoCa evaluation also scores greedy captions
  assert all(
    np.isfinite(final[f"heldout/captioning/{k}"])
    for k in ("cider", "bleu4", "cider_shuffled", "bleu4_shuffled")
  )


def _one_step(config):
  setup, before, _, after, m = one_train_step(config)
  return setup, before.params, after, m


def test_lit_locked_tower_has_no_updates_and_no_optimizer_state():
  config = demo_config()
  config.init.lock_towers = ("image",)
  config.init.allow_random_lock = True  # a random locked tower: enough to test the mechanism
  config.optimizer.warmup_steps = 0  # so the first step moves what it may move
  _, before, after, m = _one_step(config)
  for a, b in zip(jax.tree.leaves(after.params["image"]), jax.tree.leaves(before["image"])):
    np.testing.assert_array_equal(a, b)
  moved = [
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after.params["text"]), jax.tree.leaves(before["text"]))
  ]
  assert all(moved)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  moments = sum(x.size for x in jax.tree.leaves(after.opt_state) if x.dtype == np.float32)
  # Adam keeps two moments per trainable parameter; the locked tower has none
  assert moments == 2 * (size(before) - size(before["image"]))
  assert np.isfinite(m["loss"])


def test_patch_dropout_is_keyed():
  """Patch dropout draws from the key it is given (training with it, also over micro-batches:
  tests/train/test_accumulation.py)."""
  model = build_model(
    dict(
      name="clip",
      embed_dim=32,
      image=dict(variant="micro/8", image_size=32, patch_dropout=0.5),
      text=dict(variant="micro", vocab_size=50, context_length=8),
    ),
    nnx.Rngs(0),
  )
  key = jax.random.key(0)
  a, b = model.encode_image(IMAGES, dropout_rng=key), model.encode_image(IMAGES, dropout_rng=key)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, model.encode_image(IMAGES))  # dropout changes the features
  x = jnp.ones((2, 17, 64))
  assert model.image._drop_patches(x, key).shape == (2, 1 + 8, 64)  # class token + half


def test_init_from_pretrained_weights_with_resized_positions(tmp_path):
  config = demo_config()
  _, flat = export_random_model(config, tmp_path / "pre")
  config.init.checkpoint = str(tmp_path / "pre")
  setup = build(config)
  params = jax.device_get(initial_state(setup).params)
  np.testing.assert_array_equal(params["text"]["token_embedding"], flat["text.token_embedding"])
  np.testing.assert_array_equal(
    params["image"]["positional_embedding"], flat["image.positional_embedding"]
  )
  # a higher training resolution: the image position grid is resampled (4x4 -> 6x6)
  config.data.image_size = 48
  setup = build(config)
  params = jax.device_get(initial_state(setup).params)
  assert params["image"]["positional_embedding"].shape == (1 + 36, 64)
  np.testing.assert_array_equal(
    params["image"]["transformer"]["blocks"][0]["attn"]["query"],
    flat["image.transformer.blocks.0.attn.query"],
  )


def test_vlpt_eval_runs_the_evaluators_on_pretrained_weights(tmp_path, cli_env):
  export_random_model(demo_config(), tmp_path / "pre")
  workdir = tmp_path / "eval"
  run(
    cli("vlpt.cli.eval", workdir, f"--config.init.checkpoint={tmp_path / 'pre'}"),
    env_with_devices(cli_env, 8),
  )
  rows = [r for r in metrics(workdir) if "heldout/zeroshot/top1" in r]
  assert len(rows) == 1 and rows[0]["step"] == 0


def test_init_from_mismatch_is_a_config_error(tmp_path):
  config = demo_config()
  export_random_model(config, tmp_path / "pre")
  config.init.checkpoint = str(tmp_path / "pre")
  config.model.embed_dim = 48
  with pytest.raises(ConfigError, match="config.init.checkpoint=.*shape mismatch"):
    initial_state(build(config))
  config.init.checkpoint = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="no such checkpoint"):
    build(config)


def test_model_config_errors():
  config = demo_config()
  config.model.image.poool = "map"
  with pytest.raises(ConfigError, match="did you mean config.model.image.pool"):
    build(config)
  config = demo_config("coca,tiny")
  config.model.embed_dim = 48
  with pytest.raises(ConfigError, match="CoCa needs config.model.embed_dim"):
    build(config)
  config = demo_config()
  config.init.lock_towers = ("vision",)
  with pytest.raises(ConfigError, match="lock_towers"):
    build(config)
  config = demo_config()
  config.model.decoder = {"depth": 2}
  with pytest.raises(ConfigError, match="CoCa and LocCa only"):
    build(config)


def test_vlpt_load_of_a_training_workdir(reference_run):
  import vlpt

  workdir = reference_run("short")  # (read only)
  loaded = vlpt.load(str(workdir))
  # the parameters alone, read to the host, equal the trainer's restore of the whole state

  config = load_config(str(workdir / "vlpt_config.json"))
  setup, state = restore(config, str(workdir))
  want = flat_params(nnx.merge(setup.graphdef, jax.device_get(state.params)))
  assert set(loaded.bundle.params) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(np.asarray(loaded.bundle.params[name]), np.asarray(value), name)
  ids = loaded.tokenizer(["a red circle", "a blue square"])
  emb = np.asarray(loaded.encode_text(ids))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  images = np.zeros((2, 32, 32, 3), np.float32)
  assert loaded.encode_image(images).shape == (2, emb.shape[1])
  from PIL import Image

  assert loaded.preprocess(Image.new("RGB", (50, 40))).shape == (32, 32, 3)
  assert loaded.logit_scale > 1.0 and loaded.logit_bias is None


@pytest.mark.parametrize("pool", ["first", "map"])
def test_bidirectional_text_tower_with_padding_mask(pool):
  """BERT/ALIGN-style: every token sees every other; padding changes nothing."""
  model = build_model(
    dict(
      name="clip",
      embed_dim=32,
      image=dict(variant="micro/8", image_size=32),
      text=dict(
        variant="micro", vocab_size=50, context_length=12, causal=False, pool=pool, mask_padding=True
      ),
    ),
    nnx.Rngs(0),
  )
  ids = np.array([[48, 5, 6, 7, 49, 0, 0, 0]])
  longer = np.concatenate([ids, np.zeros((1, 4), int)], axis=1)
  np.testing.assert_allclose(model.encode_text(ids), model.encode_text(longer), atol=1e-6)
  changed = ids.copy()
  changed[0, 3] = 9  # a later token changes the pooled (first / attention-pooled) embedding
  assert not np.allclose(model.encode_text(ids), model.encode_text(changed), atol=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_coca_demo_captions_beat_the_shuffled_baseline(tmp_path, cli_env):
  """Issue 9: greedy captions of held-out demo images score a CIDEr far above the same captions
  scored against other images' references (an image-blind captioner's level)."""
  workdir = tmp_path / "coca"
  run(
    cli(
      "vlpt.cli.train",
      workdir,
      "--config.total_steps=500",
      "--config.eval_every_steps=500",
      "--config.checkpoint_every_steps=500",
      "--config.eval.datasets.heldout.num_examples=512",
      config=os.path.join(REPO, "configs", "demo.py:coca"),
    ),
    env_with_devices(cli_env, 8),
  )
  final = [r for r in metrics(workdir) if "heldout/captioning/cider" in r][-1]
  assert final["step"] == 500
  cider, shuffled = final["heldout/captioning/cider"], final["heldout/captioning/cider_shuffled"]
  assert cider > 3.0 and cider > 4 * shuffled, (cider, shuffled)
  assert final["heldout/captioning/bleu4"] > 2 * final["heldout/captioning/bleu4_shuffled"]


@pytest.mark.parametrize(
  "image",
  [
    dict(),  # CLIP: class token, token pooling
    dict(class_token=False, pool="map", ln_pre=False, patch_bias=True, proj=False),  # SigLIP
    dict(class_token=False, pool="gap", final_ln_after_pool=True),
    "coca",
  ],
)
def test_patch_tokens_are_what_the_pooling_reads(image):
  """``patch_tokens``: one token per patch, the very tokens the tower pools (dense tasks read them)."""
  if image == "coca":
    model = build_model(COCA, nnx.Rngs(0))
  else:
    model = build_model(
      dict(
        name="clip",
        embed_dim=64,
        image=dict(variant="micro/8", image_size=32, **image),
        text=dict(variant="micro", vocab_size=50, context_length=8),
      ),
      nnx.Rngs(0),
    )
  tower = model.image
  tokens = tower.patch_tokens(IMAGES)
  pooled, returned = tower.features(IMAGES)
  assert tokens.shape == (3, 16, 64)  # 4x4 patches of 8 px, width 64
  if image == "coca":  # features' tokens are the pooler's queries; patch_tokens what it attends to
    x, valid = tower.encode(IMAGES)
    assert valid is None
    np.testing.assert_allclose(tokens, x[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(tower.ln_post(tower.attn_pool(x))[:, 1:], returned, rtol=1e-5, atol=1e-6)
    return
  np.testing.assert_allclose(tokens, returned, rtol=1e-6)
  if image.get("pool") == "map":
    np.testing.assert_allclose(tower.map_head(tokens), pooled, rtol=1e-5, atol=1e-6)
  if image.get("pool") == "gap":
    np.testing.assert_allclose(tower.proj(tower.ln_post(tokens.mean(1))), pooled, rtol=1e-5, atol=1e-6)
