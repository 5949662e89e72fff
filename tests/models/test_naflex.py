"""The NaFlex image tower (SigLIP 2, Tschannen et al. 2025; NaViT, Dehghani et al. 2023) on its own:
padding is invisible, plain images are NaFlex batches without padding, gradients stay finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt.data.preprocess import naflex_patches
from vlpt.models import build_model

P, N = 4, 24
MODEL = dict(
  name="clip",
  embed_dim=32,
  init_logit_bias=-10.0,
  image=dict(
    variant="B/4",
    image_size=16,  # a 4 x 4 grid of learned positions
    width=32,
    depth=2,
    heads=2,
    mlp_dim=64,
    class_token=False,
    ln_pre=False,
    patch_bias=True,
    pool="map",
    proj=False,
    act="gelu_tanh",
    norm_eps=1e-6,
    naflex=True,
  ),
  text=dict(variant="B", vocab_size=50, context_length=8, width=32, depth=1, heads=2, mlp_dim=64),
)


@pytest.fixture(scope="module")
def model():
  return build_model(MODEL, nnx.Rngs(0))


@pytest.fixture(scope="module")
def encode(model):
  """The model's image encoder, jitted (eager op-by-op dispatch is slow on a busy CPU)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda batch: nnx.merge(graphdef, state).encode_image(batch))
  return lambda batch: np.asarray(fn(batch))


def _image(h, w):
  return np.random.RandomState(100 * h + w).randn(h * P, w * P, 3).astype(np.float32)


def _batch(shapes, n, garbage=0.0):
  """Random images of the given patch grids (one image per grid) as one NaFlex batch of ``n``
  slots, padding filled with ``garbage`` (which must not matter)."""
  parts = [naflex_patches(_image(h, w), P, n) for h, w in shapes]
  batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  batch["pixel_values"][batch["pixel_attention_mask"] == 0] = garbage
  return batch


def test_padding_is_invisible(encode):
  shapes = [(2, 7), (5, 3), (4, 4), (1, 1)]
  a = encode(_batch(shapes, 16))
  b = encode(_batch(shapes, N, garbage=7.0))
  np.testing.assert_allclose(a, b, atol=1e-6)
  # each image alone gives what it gives in the batch
  alone = encode(_batch(shapes[1:2], 16))
  np.testing.assert_allclose(alone[0], a[1], atol=1e-6)


def test_plain_images_are_naflex_batches_without_padding(model, encode):
  images = np.random.RandomState(1).randn(2, 16, 16, 3).astype(np.float32)
  as_dict = model.image.as_naflex(jnp.asarray(images))
  np.testing.assert_allclose(encode(images), encode(as_dict), atol=1e-6)
  # at the native grid the positions are used as stored (resizing a grid to itself is exact)
  grid = model.image.positional_embedding[...]
  from vlpt.models.vit import resize_positions

  same = resize_positions(grid.reshape(4, 4, -1), jnp.asarray([[4, 4]]), 16)[0]
  np.testing.assert_array_equal(same, grid)
  # other resolutions and aspect ratios go through resized positions
  wide = np.random.RandomState(2).randn(2, 8, 28, 3).astype(np.float32)
  assert encode(wide).shape == (2, 32)


def test_one_compilation_serves_every_aspect_ratio(model):
  graphdef, state = nnx.split(model)
  traces = []

  @jax.jit
  def encode(state, batch):
    traces.append(1)
    return nnx.merge(graphdef, state).encode_image(batch)

  for shapes in ([(2, 7), (4, 4)], [(1, 16), (8, 2)], [(3, 5), (5, 3)]):
    encode(state, _batch(shapes, N))
  assert len(traces) == 1


def test_gradients_are_finite_with_padding(model):
  graphdef, state = nnx.split(model)
  batch = _batch([(1, 2), (6, 4)], N)
  ids = jnp.asarray(np.random.RandomState(3).randint(1, 50, (2, 8)))

  def loss(state):
    out = nnx.merge(graphdef, state)(batch, ids)
    logits = out["logit_scale"] * out["image_emb"] @ out["text_emb"].T + out["logit_bias"]
    return -jnp.sum(jax.nn.log_sigmoid((2 * jnp.eye(2) - 1) * logits))

  grads = jax.jit(jax.grad(loss))(state)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads["image"]["positional_embedding"][...]).sum()) > 0


def test_refusals(model):
  plain = build_model({**MODEL, "image": {**MODEL["image"], "naflex": False}}, nnx.Rngs(0))
  with pytest.raises(ValueError, match="NaFlex tower"):
    plain.encode_image(_batch([(2, 2)], 8))
  with pytest.raises(ValueError, match="missing spatial_shapes"):
    batch = _batch([(2, 2)], 8)
    del batch["spatial_shapes"]
    model.encode_image(batch)
  with pytest.raises(ValueError, match="naflex=True needs"):
    build_model({**MODEL, "image": {**MODEL["image"], "class_token": True}}, nnx.Rngs(0))


def test_sharded_naflex_forward_equals_single_device(model, encode):
  """The tower names logical axes only: a NaFlex batch split over data / FSDP / tensor axes gives
  the single-device embeddings."""
  from vlpt import sharding as S

  batch = _batch([(2, 7), (5, 3), (4, 4), (1, 1), (3, 3), (6, 2), (1, 9), (2, 2)], 16)
  want = encode(batch)
  graphdef, params = nnx.split(model, nnx.Param)
  mesh = S.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = S.DEFAULT_RULES
  params = jax.device_put(params.to_pure_dict(), S.param_shardings(params, mesh, rules).to_pure_dict())

  @jax.jit
  def forward(p, b):
    return nnx.merge(graphdef, p).encode_image(b)

  with S.activate(mesh, rules):
    placed = {k: jax.device_put(v, S.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    got = forward(params, placed)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)
