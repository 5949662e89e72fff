"""Model structure: sharded forward = single device, normalization, pooling, temperature, dtypes.

Placement of real arrays on data / FSDP / tensor meshes: tests/train/test_placement.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt import sharding as S
from vlpt.models import build_model
from vlpt.models.layers import LayerNorm, quick_gelu

TINY = dict(
  name="clip",
  embed_dim=32,
  image=dict(variant="micro/8", image_size=32),
  text=dict(variant="micro", vocab_size=50, context_length=8),
)


def test_sharded_forward_equals_single_device():
  model = build_model(TINY, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((8, 32, 32, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(1, 49, (8, 8)), jnp.int32)
  want = model(images, ids)
  graphdef, params = nnx.split(model, nnx.Param)
  mesh = S.make_mesh(dict(data=2, fsdp=2, tensor=2))
  rules = S.DEFAULT_RULES
  shardings = S.param_shardings(params, mesh, rules).to_pure_dict()
  params = jax.device_put(params.to_pure_dict(), shardings)
  assert (
    len(params["image"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"].sharding.device_set) == 8
  )

  @jax.jit
  def forward(p, x, t):
    return nnx.merge(graphdef, p)(x, t)

  with S.activate(mesh, rules):
    got = forward(
      params,
      jax.device_put(images, S.batch_sharding(mesh, 4)),
      jax.device_put(ids, S.batch_sharding(mesh, 2)),
    )
  for key in ("image_emb", "text_emb"):
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=2e-6)


def test_embeddings_normalized_and_eot_pooling():
  model = build_model(TINY, nnx.Rngs(1))
  ids = jnp.asarray([[48, 5, 7, 49, 0, 0, 0, 0], [48, 5, 7, 49, 3, 3, 3, 3]], jnp.int32)
  emb = model.encode_text(ids)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-6)
  # Causal attention + pooling at argmax (EOT): tokens after EOT cannot change the embedding.
  np.testing.assert_allclose(np.asarray(emb[0]), np.asarray(emb[1]), atol=1e-6)
  img = model.encode_image(jnp.ones((2, 32, 32, 3)))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(img), axis=1), 1.0, rtol=1e-6)


def test_temperature_clamp_and_bias():
  model = build_model(dict(TINY, init_logit_bias=-10.0, init_logit_scale=np.log(10)), nnx.Rngs(0))
  out = model(jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 8), jnp.int32))
  assert float(out["logit_scale"]) == pytest.approx(10.0) and float(out["logit_bias"]) == -10.0
  model.logit_scale[...] = jnp.asarray(7.0)
  model.apply_constraints()
  assert float(model.logit_scale[...]) == pytest.approx(np.log(100))


def test_layer_pieces_match_torch_semantics():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 16)), jnp.float32)
  ln = LayerNorm(16)
  ref = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(ln(x)), np.asarray(ref), atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(quick_gelu(x)), np.asarray(x / (1 + jnp.exp(-1.702 * x))), atol=1e-6
  )


def test_bf16_compute_keeps_fp32_params():
  model = build_model(dict(TINY, dtype="bfloat16"), nnx.Rngs(0))
  out = model(jnp.zeros((2, 32, 32, 3)), jnp.ones((2, 8), jnp.int32))
  assert model.image.transformer.blocks[0].mlp.fc1.kernel[...].dtype == jnp.float32
  assert out["image_emb"].dtype == jnp.float32  # embeddings are normalized in fp32
