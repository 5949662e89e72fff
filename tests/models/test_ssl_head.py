"""The image tower's self-distillation parts (SigLIP 2 Sec. 2.3; config.model.image.ssl_head): the
mask token replaces exactly the masked patch embeddings, positions are resized for other grids
(the identity at the training size), the heads shard by logical axes, and the open_clip / HF
exports drop the heads and the mask token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt.models import build_model, check_config, model_kwargs
from vlpt.models.vit import resize_positions

V = 40
HEAD = {"prototypes": 32, "hidden": 16, "bottleneck": 8}
SIGLIP_IMAGE = dict(
  variant="micro/4", pool="map", class_token=False, patch_bias=True, ln_pre=False, proj=False
)
SIGLIP_TEXT = dict(
  variant="micro", vocab_size=V, context_length=8, causal=False, pool="last", proj=True, proj_bias=True
)


def _kwargs(image=None, **extra):
  image = {**SIGLIP_IMAGE, "ssl_head": HEAD, **(image or {})}
  spec = {"name": "clip", "embed_dim": 64, "image": image, "text": SIGLIP_TEXT, "init_logit_bias": -10.0}
  return model_kwargs({**spec, **extra}, image_size=32, vocab_size=V, context_length=8)


def _model(image=None, seed=0):
  return build_model(_kwargs(image), nnx.Rngs(seed))


def test_mask_token_replaces_only_the_masked_patches():
  tower = _model().image
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  mask = jnp.zeros((2, 64), bool).at[0, 3].set(True).at[1, 10].set(True).at[1, 11].set(True)
  seen = {}
  original = tower.transformer.__class__.__call__

  def spy(self, x, **kw):  # the tokens the transformer receives, with positions added
    seen.setdefault("x", []).append(x)
    return original(self, x, **kw)

  cls = tower.transformer.__class__
  cls.__call__ = spy
  try:
    tower.encode(images)
    tower.encode(images, patch_mask=mask)
  finally:
    cls.__call__ = original
  plain, masked = seen["x"]
  changed = np.asarray(jnp.any(plain != masked, axis=-1))
  np.testing.assert_array_equal(changed, np.asarray(mask))
  pos = tower.positional_embedding[...]
  np.testing.assert_allclose(masked[0, 3], tower.mask_token[...] + pos[3], rtol=1e-6)
  np.testing.assert_allclose(masked[1, 11], tower.mask_token[...] + pos[11], rtol=1e-6)


def test_patch_mask_needs_a_mask_token():
  tower = build_model(_kwargs({"ssl_head": None}), nnx.Rngs(0)).image
  assert tower.mask_token is None and tower.ssl_global is None
  with pytest.raises(ValueError, match="mask token"):
    tower.encode(jnp.zeros((1, 32, 32, 3)), patch_mask=jnp.ones((1, 64), bool))


@pytest.mark.parametrize("class_token", [False, True])
def test_positions_at_the_training_size_are_the_learned_ones(class_token):
  image = {"class_token": class_token, "pool": "token" if class_token else "map"}
  tower = _model(image).image
  np.testing.assert_array_equal(tower.positions(8, 8), tower.positional_embedding[...])
  grid = tower.positional_embedding[...][int(class_token) :].reshape(8, 8, -1)
  same = resize_positions(grid, jnp.asarray([[8, 8]]), 64)[0]
  np.testing.assert_allclose(same, grid.reshape(64, -1), atol=1e-6)  # the resize is the identity
  # another grid (a 16 px local crop: 4 x 4 patches) gets resized positions; the class token's stays
  small = tower.positions(4, 4)
  assert small.shape == (int(class_token) + 16, grid.shape[-1])
  if class_token:
    np.testing.assert_array_equal(small[0], tower.positional_embedding[...][0])
  # as the NaFlex path resizes a 4 x 4 image's positions
  np.testing.assert_allclose(
    small[int(class_token) :], resize_positions(grid, jnp.asarray([[4, 4]]), 16)[0], atol=1e-6
  )
  pooled, tokens = tower.features(jnp.zeros((2, 16, 16, 3)))
  assert pooled.shape == (2, 64) and tokens.shape == (2, 16, 64)


def test_heads_output_prototype_logits_and_shard_by_logical_axes():
  model = _model()
  pooled, tokens = model.image.features(jnp.zeros((2, 32, 32, 3)))
  assert model.image.ssl_global(pooled).shape == (2, 32)
  assert model.image.ssl_patch(tokens).shape == (2, 64, 32)
  axes = nnx.get_partition_spec(nnx.state(model.image.ssl_patch, nnx.Param))
  flat = {"/".join(map(str, k)): v.value for k, v in nnx.to_flat_state(axes)}
  assert tuple(flat["mlp/0/kernel"]) == ("embed", "mlp")
  assert tuple(flat["prototypes/kernel"]) == ("proj", "vocab")
  assert "bias" not in "".join(k for k in flat if k.startswith("prototypes"))


def test_config_errors():
  with pytest.raises(ValueError, match="unknown ssl_head keys"):
    check_config(_kwargs({"ssl_head": {"protoypes": 8}}))
  with pytest.raises(ValueError, match="patch tokens"):
    check_config(_kwargs({"pool": "coca", "ssl_head": HEAD}))


@pytest.mark.parametrize("to", ["vlpt", "hf"])
def test_exports_drop_the_heads_and_mask_token(tmp_path, to):
  import json

  import vlpt
  from vlpt.data.preprocess import Preprocess
  from vlpt.weights.formats import Bundle, contrastive_part, write_bundle
  from vlpt.weights.state import flat_params

  kwargs = _kwargs()
  model = build_model(kwargs, nnx.Rngs(3))
  bundle = Bundle(kwargs, flat_params(model), None, Preprocess(image_size=32), "test")
  part = contrastive_part(bundle)
  assert not any("ssl_" in k or "mask_token" in k for k in part.params)
  assert "ssl_head" not in part.model["image"]
  assert len(part.params) == len(bundle.params) - sum(
    1 for k in bundle.params if k.startswith(("image.ssl_", "image.mask_token"))
  )
  write_bundle(bundle, str(tmp_path / "out"), to=to)
  if to == "hf":
    assert "ssl" not in json.dumps(json.load(open(tmp_path / "out" / "config.json")))
  loaded = vlpt.load(str(tmp_path / "out"), tokenizer={"name": "word", "context_length": 8})
  images = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
  np.testing.assert_allclose(loaded.encode_image(images), model.encode_image(images), atol=1e-5)
