"""LocCa's decoder (vlpt.models.locca): boxes as tokens, the task sequences and their loss masks,
parallel prediction, KV-cache decoding, logical-axis sharding, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt import sharding as S
from vlpt.losses.captioning import masked_mean, token_nll
from vlpt.models import build_model, check_config, model_kwargs
from vlpt.models.locca import (
  boxes_to_tokens,
  decoder_inputs,
  parallel_rows,
  task_sequences,
  tokens_to_boxes,
)

V, PAD, SOT, EOT = 40, 0, 38, 39  # a word-tokenizer-like vocabulary
TINY = dict(
  name="locca",
  embed_dim=64,
  image=dict(variant="micro/8", image_size=32, pool="map", class_token=False),
  text=dict(variant="micro", vocab_size=V, context_length=8),
  decoder=dict(variant="micro", num_bins=16),
)


def _model(**overrides):
  return build_model(
    model_kwargs({**TINY, **overrides}, image_size=32, vocab_size=V, context_length=8), nnx.Rngs(0)
  )


def _batch():
  text = jnp.array([[SOT, 5, 6, 7, EOT, PAD, PAD, PAD], [SOT, 9, EOT, PAD, PAD, PAD, PAD, PAD]])
  boxes = jnp.array(
    [[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0]], [[0.0, 0.5, 1.0, 0.99], [0.2, 0.2, 0.3, 0.3]]]
  )
  labels = jnp.array([[3, -1], [1, 2]])
  phrases = jnp.full((2, 2, 8), PAD).at[:, :, 0].set(SOT).at[:, :, 1].set(11).at[:, :, 2].set(12)
  phrases = phrases.at[:, :, 3].set(EOT).at[0, 1].set(PAD)
  return dict(text=text, boxes=boxes, box_labels=labels, box_phrases=phrases)


def test_box_token_round_trip():
  rng = np.random.default_rng(0)
  boxes = jnp.asarray(rng.uniform(0, 1, (64, 4)), jnp.float32)
  boxes = boxes.at[0].set(jnp.array([0.0, 0.0, 1.0, 1.0]))  # the edges stay in range
  for bins in (16, 500):
    tokens = boxes_to_tokens(boxes, text_vocab=V, num_bins=bins)
    assert tokens.dtype == jnp.int32 and int(tokens.min()) >= V and int(tokens.max()) < V + bins
    back = tokens_to_boxes(tokens, text_vocab=V, num_bins=bins)
    np.testing.assert_array_less(np.abs(np.asarray(back - boxes)), 0.5 / bins + 1e-6)
    np.testing.assert_array_equal(boxes_to_tokens(back, text_vocab=V, num_bins=bins), tokens)


def test_task_sequences_layout_and_loss_mask():
  d = _model().decoder
  s = task_sequences(d, drop=(PAD, SOT, EOT), pad=PAD, **_batch())
  ids, predicted, given = (np.asarray(s[k]) for k in ("ids", "predicted", "given"))
  assert ids.shape == (2 * 5, d.context_length + 1)
  np.testing.assert_array_equal(s["task"], [0, 1, 1, 2, 2] * 2)
  box = list(np.asarray(boxes_to_tokens(jnp.array([0.1, 0.2, 0.5, 0.6]), text_vocab=V, num_bins=16)))
  want = {
    0: ([d.cap_id, 5, 6, 7, d.eos_id], [0, 1, 1, 1, 1]),  # cap [words eos]
    1: ([d.aref_id, 11, 12, *box, d.eos_id], [0, 0, 0, 1, 1, 1, 1, 1]),  # aref phrase [box eos]
    3: ([d.gcap_id, *box, 11, 12, d.eos_id], [0, 0, 0, 0, 0, 1, 1, 1]),  # gcap box [phrase eos]
  }
  for row, (seq, pred) in want.items():
    np.testing.assert_array_equal(ids[row, : len(seq)], seq)
    assert (ids[row, len(seq) :] == PAD).all()
    np.testing.assert_array_equal(predicted[row, : len(pred)], pred)
    assert not predicted[row, len(pred) :].any()
    # the prefix: what precedes the first predicted token
    np.testing.assert_array_equal(given[row, : len(pred)], 1 - np.asarray(pred))
  assert not predicted[[2, 4]].any()  # example 0's second slot is empty (label -1)
  assert predicted[[7, 9]].any()  # example 1's is not

  # the loss reads only the predicted part: logits that are right there and arbitrary elsewhere
  inputs, labels, mask = decoder_inputs(d, s, np.zeros(10, bool))
  logits = 30.0 * jax.nn.one_hot(labels, d.vocab_size)
  noise = jax.random.normal(jax.random.key(0), logits.shape) * 50
  logits = jnp.where(mask[..., None], logits, noise)
  assert float(masked_mean(token_nll(logits, labels), mask)) < 1e-6
  assert float(masked_mean(token_nll(noise, labels), mask)) > 1.0


def test_without_boxes_only_captions():
  d = _model().decoder
  s = task_sequences(d, _batch()["text"], drop=(PAD, SOT, EOT), pad=PAD)
  assert s["ids"].shape[0] == 2 and (np.asarray(s["task"]) == 0).all()


def test_parallel_rows_fraction():
  for n, f in ((10, 0.5), (7, 0.3), (5, 0.0), (5, 1.0)):
    assert parallel_rows(n, f).sum() == round(n * f)
  np.testing.assert_array_equal(parallel_rows(4, 0.5), [False, True, False, True])


def test_parallel_rows_see_mask_tokens_and_no_causal_mask():
  model = _model()
  d = model.decoder
  s = task_sequences(d, drop=(PAD, SOT, EOT), pad=PAD, **_batch())
  parallel = parallel_rows(10, 0.5)
  inputs, labels, mask = (np.asarray(x) for x in decoder_inputs(d, s, parallel))
  given = np.asarray(s["given"])[:, :-1]
  for row in range(10):
    if parallel[row]:  # the given prefix, then only mask tokens
      np.testing.assert_array_equal(inputs[row][given[row]], np.asarray(s["ids"])[row, :-1][given[row]])
      assert (inputs[row][~given[row]] == d.mask_id).all()
    else:  # teacher forcing: the sequence shifted by one
      np.testing.assert_array_equal(inputs[row], np.asarray(s["ids"])[row, :-1])
  # a later input changes earlier outputs only where the attention is not causal
  _, tokens = model.image_features(jnp.zeros((1, 32, 32, 3)))
  tokens = jnp.repeat(tokens, 2, axis=0)
  x = jnp.asarray(inputs[:2])
  flags = jnp.array([False, True])
  changed = x.at[:, -1].set(7)
  a, b = d(x, tokens, parallel=flags), d(changed, tokens, parallel=flags)
  np.testing.assert_allclose(a[0, :-1], b[0, :-1], atol=1e-5)  # causal row: the past is unchanged
  assert not np.allclose(a[1, 0], b[1, 0], atol=1e-4)  # parallel row: position 0 sees the end


def test_kv_cache_decoding_matches_teacher_forcing():
  model = _model()
  d = model.decoder
  _, tokens = model.image_features(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)))
  seq = jnp.array([[d.cap_id, 5, 6, 7, 9, 11], [d.cap_id, 12, 13, 5, 6, 7]])
  full = d(seq, tokens)
  model.init_cache(2, seq.shape[1])
  for i in range(seq.shape[1]):
    step = model.decode_step(seq[:, i : i + 1], jnp.asarray(i), tokens)
    np.testing.assert_allclose(step, full[:, i], atol=1e-4)
  # generation starts at cap, stops at eos, and reads back as text ids only
  from vlpt.models.generation import generate

  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  ids = generate(model, images, max_len=8, sot_id=model.caption_start, eot_id=model.caption_end)
  assert (ids[:, 0] == d.cap_id).all() and ids.shape == (2, 8)
  text = np.asarray(model.text_ids(ids))
  assert ((text >= 0) & (text < V)).all() and (text[:, 0] == PAD).all()


def test_decoder_parameters_shard_by_logical_axes():
  """The decoder names logical axes only; the rules map them onto any mesh (here data x fsdp x
  tensor), and the sharded forward equals the single-device one."""
  model = _model()
  s = task_sequences(model.decoder, _batch()["text"].repeat(4, axis=0), drop=(PAD, SOT, EOT), pad=PAD)
  inputs, _, _ = decoder_inputs(model.decoder, s, parallel_rows(8, 0.5))
  images = jax.random.uniform(jax.random.key(2), (8, 32, 32, 3))

  def forward(m, x, ids):
    _, tokens = m.image_features(x)
    return m.decoder(ids, tokens, parallel=jnp.asarray(parallel_rows(8, 0.5)))

  want = forward(model, images, inputs)
  graphdef, params = nnx.split(model, nnx.Param)
  mesh = S.make_mesh(dict(data=2, fsdp=2, tensor=2))
  shardings = S.param_shardings(params, mesh, S.DEFAULT_RULES).to_pure_dict()
  dec = shardings["decoder"]
  assert dec["head"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert dec["token_embedding"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  cross = dec["transformer"]["blocks"][0]["cross_block"]["attn"]["query"]
  assert cross.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  placed = jax.device_put(params.to_pure_dict(), shardings)
  with S.activate(mesh, S.DEFAULT_RULES):
    got = jax.jit(lambda p, x, t: forward(nnx.merge(graphdef, p), x, t))(
      placed,
      jax.device_put(images, S.batch_sharding(mesh, 4)),
      jax.device_put(inputs, S.batch_sharding(mesh, 2)),
    )
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(decoder=dict(variant="micro", width=128, heads=2)), "must equal the image tower's width"),
    (dict(image=dict(variant="micro/8", image_size=32, pool="coca")), "patch tokens"),
    (dict(decoder=dict(variant="micro", num_bin=8)), "did you mean config.model.decoder.num_bins"),
    (dict(decoder=dict(variant="micro", num_bins=1)), "num_bins must be at least 2"),
  ],
)
def test_config_errors(overrides, message):
  kwargs = model_kwargs({**TINY, **overrides}, image_size=32, vocab_size=V, context_length=8)
  with pytest.raises(ValueError, match=message):
    check_config(kwargs)


def test_contrastive_part_is_clip():
  """The towers are CLIP's: the same embeddings as a CLIP model holding the same parameters."""
  model = _model()
  clip_kwargs = {k: v for k, v in TINY.items() if k != "decoder"}
  clip = build_model(
    model_kwargs({**clip_kwargs, "name": "clip"}, image_size=32, vocab_size=V, context_length=8),
    nnx.Rngs(5),
  )
  params = nnx.state(model, nnx.Param).to_pure_dict()
  nnx.update(clip, {k: v for k, v in params.items() if k != "decoder"})
  images, ids = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3)), _batch()["text"]
  np.testing.assert_allclose(model.encode_image(images), clip.encode_image(images), atol=1e-6)
  np.testing.assert_allclose(model.encode_text(ids), clip.encode_text(ids), atol=1e-6)


@pytest.mark.parametrize("to", ["vlpt", "hf"])
def test_exports_keep_the_contrastive_part(tmp_path, to):
  """A SigLIP-layout LocCa model exports as a vlpt bundle (decoder included) or, without its
  decoder, as an HF SiglipModel; vlpt.load of either gives the towers' embeddings."""
  import vlpt
  from vlpt.data.preprocess import Preprocess
  from vlpt.weights.formats import Bundle, write_bundle
  from vlpt.weights.state import flat_params

  siglip_image = dict(
    variant="micro/8",
    image_size=32,
    pool="map",
    class_token=False,
    patch_bias=True,
    ln_pre=False,
    proj=False,
  )
  siglip_text = dict(
    variant="micro", vocab_size=V, context_length=8, causal=False, pool="last", proj=True, proj_bias=True
  )
  kwargs = model_kwargs(
    {**TINY, "image": siglip_image, "text": siglip_text, "init_logit_bias": -10.0},
    image_size=32,
    vocab_size=V,
    context_length=8,
  )
  model = build_model(kwargs, nnx.Rngs(3))
  bundle = Bundle(kwargs, flat_params(model), None, Preprocess(image_size=32), "test")
  write_bundle(bundle, str(tmp_path / "out"), to=to)
  loaded = vlpt.load(str(tmp_path / "out"), tokenizer={"name": "word", "context_length": 8})
  images = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
  ids = np.asarray(_batch()["text"])
  np.testing.assert_allclose(loaded.encode_image(images), model.encode_image(images), atol=1e-5)
  np.testing.assert_allclose(loaded.encode_text(ids), model.encode_text(ids), atol=1e-5)
  assert (loaded.config["name"] == "locca") == (to == "vlpt")


def test_flops_count_the_decoder():
  from vlpt.models.flops import training_flops_per_example

  kwargs = model_kwargs(TINY, image_size=32, vocab_size=V, context_length=8)
  flops = training_flops_per_example(kwargs, batch_size=8)
  assert flops["decoder"] > 0 and flops["total"] == sum(v for k, v in flops.items() if k != "total")
