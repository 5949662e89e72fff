"""Tiled ring losses: bf16 inputs, a saturated logit scale, and no b x B buffer per device.

tests/test_losses.py shows the ring equals the whole-batch loss on well-conditioned fp32 inputs;
these tests cover the numerics that matter at scale and the memory claim of vlpt.losses.ring.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlpt import sharding as S
from vlpt.losses import sigmoid_contrastive, softmax_contrastive
from vlpt.losses.contrastive import sigmoid_contrastive_sharded, softmax_contrastive_sharded
from vlpt.losses.ring import sigmoid_ring_sharded, softmax_ring_sharded

BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, ~2.4 decimal digits)
LOSSES = {  # name -> (whole-batch reference, ring, gather), all with the (img, txt, s, b) signature
  "softmax": (
    lambda i, t, s, b: softmax_contrastive(i, t, s),
    softmax_ring_sharded,
    softmax_contrastive_sharded,
  ),
  "sigmoid": (sigmoid_contrastive, sigmoid_ring_sharded, sigmoid_contrastive_sharded),
}
BIAS = {"softmax": 0.0, "sigmoid": -10.0}
NUM_GRADS = {"softmax": 3, "sigmoid": 4}  # the softmax ignores the bias: no gradient to compare


def _normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def sharded_value_and_grad(fn, mesh):
  """jit(value_and_grad) of the global loss computed by ``fn`` inside shard_map over the batch."""
  spec = P(S.BATCH_AXES)
  loss = jax.shard_map(
    lambda i, t, s, b: fn(i, t, s, b, S.BATCH_AXES)[0],
    mesh=mesh,
    in_specs=(spec, spec, P(), P()),
    out_specs=P(),
  )
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def _max_rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


@pytest.mark.parametrize("scale", [1 / 0.07, 100.0])  # CLIP's initial and maximal scale
@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_bf16_embeddings_match_fp32_reference(name, scale):
  """bf16 embeddings: the ring upcasts before any arithmetic, so the only error is bf16's own.

  Two comparisons separate the sources:
  * against the fp32 whole-batch loss on the *bf16-rounded* inputs, the value agrees to fp32
    precision and each gradient element is that fp32 gradient rounded to bf16 (within u = 2^-8
    of it, plus fp32 noise ~1e-5 of the largest element at s = 100; a bound, not a fit: the
    rounding uses up to 97% of it);
  * against the fp32 loss on the *original* inputs (what a bf16 model costs), rounding the unit
    embeddings moves every logit by s * O(u / sqrt(D)) (at most s * 2u). Measured on this data
    (B = 64, D = 64, seeds 0-3): value <= 0.14% = 0.36u, scale/bias gradients <= 0.13%,
    embedding gradients <= 1.3% of their largest element (3.4u, at s = 100). Tolerances: u for
    the value and the scalar gradients, 8u for the embedding gradients (>= 2.3x the measured).
  """
  plain, ring, _ = LOSSES[name]
  k = NUM_GRADS[name]
  rng = np.random.default_rng(0)
  raw = rng.standard_normal((64, 64))
  img = _normalize(raw).astype(np.float32)
  txt = _normalize(raw + 3.0 * rng.standard_normal((64, 64))).astype(np.float32)  # cos ~0.3
  scale, bias = jnp.float32(scale), jnp.float32(BIAS[name])
  img16, txt16 = jnp.asarray(img, jnp.bfloat16), jnp.asarray(txt, jnp.bfloat16)
  mesh = S.make_mesh(dict(data=2, fsdp=4))
  got_v, got_g = sharded_value_and_grad(functools.partial(ring, tile_size=4), mesh)(
    img16, txt16, scale, bias
  )
  assert got_g[0].dtype == jnp.bfloat16 and got_g[1].dtype == jnp.bfloat16

  grad = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))
  rounded_v, rounded_g = grad(img16.astype(jnp.float32), txt16.astype(jnp.float32), scale, bias)
  np.testing.assert_allclose(float(got_v), float(rounded_v), rtol=1e-6)
  for g, w in zip(got_g[:2], rounded_g[:2]):
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=BF16_U, atol=3e-5 * np.abs(w).max())
  for g, w in zip(got_g[2:k], rounded_g[2:k]):
    np.testing.assert_allclose(float(g), float(w), rtol=1e-5)

  want_v, want_g = grad(img, txt, scale, bias)
  assert abs(float(got_v) - float(want_v)) <= BF16_U * abs(float(want_v))
  for g, w in zip(got_g[:2], want_g[:2]):
    assert _max_rel(g, w) <= 8 * BF16_U
  for g, w in zip(got_g[2:k], want_g[2:k]):
    assert abs(float(g) - float(w)) <= BF16_U * abs(float(w))


def near_duplicates(b, d, seed):
  """Unit pairs at cosine ~0.96; half the rows are copies (+1e-3 noise) of the other half."""
  rng = np.random.default_rng(seed)
  img = _normalize(rng.standard_normal((b, d)))
  txt = _normalize(img + 0.3 / np.sqrt(d) * rng.standard_normal((b, d)))
  src = rng.choice(b, b // 2, replace=False)
  dst = np.setdiff1d(np.arange(b), src)
  img[dst] = img[src] + 1e-3 * rng.standard_normal((b // 2, d))
  txt[dst] = txt[src] + 1e-3 * rng.standard_normal((b // 2, d))
  return _normalize(img).astype(np.float32), _normalize(txt).astype(np.float32)


def float64_loss(name, img, txt, s, bias):
  """Loss, gradients (img, txt, scale, bias) and their terms' magnitudes, in float64.

  dL/dz = G: softmax (P + Q) / 2B - I / B (P, Q the row and column softmaxes), sigmoid
  -y sigmoid(-y z) / B. The magnitudes (the same sums over |terms|) bound the rounding error
  of any float32 evaluation of the sums.
  """
  x, t = img.astype(np.float64), txt.astype(np.float64)
  b = len(x)
  dots = x @ t.T
  if name == "softmax":
    z = s * dots

    def lse(axis):
      m = z.max(axis, keepdims=True)
      return m + np.log(np.exp(z - m).sum(axis, keepdims=True))

    value = (lse(1).sum() + lse(0).sum() - 2 * np.trace(z)) / (2 * b)
    g = (np.exp(z - lse(1)) + np.exp(z - lse(0))) / (2 * b) - np.eye(b) / b
  else:
    z = s * dots + bias
    y = 2 * np.eye(b) - 1
    value = np.sum(np.logaddexp(0.0, -y * z)) / b
    g = -y / (1 + np.exp(y * z)) / b
  grads = (s * g @ t, s * g.T @ x, np.sum(g * dots), np.sum(g))
  terms = (
    s * np.abs(g) @ np.abs(t),
    s * np.abs(g).T @ np.abs(x),
    np.sum(np.abs(g * dots)),
    np.sum(np.abs(g)),
  )
  return value, grads, terms


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_saturated_scale_with_near_duplicates_matches_float64(name):
  """Logit scale 100, positives at cosine ~0.96 and every row with a near-copy.

  The largest logit exceeds log(float32 max) = 88.7, so an un-shifted exp overflows, and each
  positive ties with its duplicate's pair (the softmax loss is ~ln 2), so the log-sum-exps must
  be merged across tiles and devices without losing the tie. Error bound, float32 (eps 6e-8):
  the loss is a difference of log-sum-exps ~98 that cancel to ~0.69 (x140), gradients are sums
  whose terms cancel among the duplicates; relative to the terms' magnitudes both come to ~1e-5.
  Measured (seeds 0-5, tiles 4 and 8): value <= 4.9e-6 relative, gradients <= 5.9e-6 of their
  terms for the ring, <= 4.8e-6 for the fp32 whole-batch loss: tolerance 2e-5 for both.
  (Relative to their own largest element the ring's gradients are off by up to 4e-4, its
  scale gradient by 14%: that gradient is ~2e-6 of its terms here, below float32 resolution.)
  """
  plain, ring, _ = LOSSES[name]
  k = NUM_GRADS[name]
  img, txt = near_duplicates(64, 32, seed=1)
  scale, bias = 100.0, BIAS[name]
  assert scale * np.max(img @ txt.T) > np.log(np.finfo(np.float32).max)  # exp would overflow
  want_v, want_g, terms = float64_loss(name, img, txt, scale, bias)
  mesh = S.make_mesh(dict(data=2, fsdp=4))
  ring_v, ring_g = sharded_value_and_grad(functools.partial(ring, tile_size=4), mesh)(
    img, txt, jnp.float32(scale), jnp.float32(bias)
  )
  plain_v, plain_g = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))(
    img, txt, jnp.float32(scale), jnp.float32(bias)
  )
  for label, v, grads in [("ring", ring_v, ring_g), ("whole batch", plain_v, plain_g)]:
    assert abs(float(v) - want_v) <= 2e-5 * abs(want_v), label
    assert np.isfinite(float(v)), label
    for i, (g, w, m) in enumerate(zip(grads[:k], want_g[:k], terms[:k])):
      err = np.max(np.abs(np.asarray(g, np.float64) - w)) / np.max(m)
      assert err <= 2e-5, (label, i, err)


def _shapes(hlo_text):
  """Every array shape that appears in an HLO module's text, as tuples of ints."""
  return {
    tuple(int(d) for d in dims.split(","))
    for dims in re.findall(r"\b[a-z]+[0-9]*\[([0-9]+(?:,[0-9]+)*)\]", hlo_text)
  }


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_ring_program_holds_no_local_by_global_buffer(name):
  """The compiled per-device program (loss and gradient) of the ring has no b x B array.

  8 devices, b = 32 rows each, B = 256, tile 8, D = 16: the ring's tiles are 8 x 8 and its blocks
  32 x 16, so a 32 x 256 (or 256 x 32) array can only be a local-by-global logit matrix; the
  gather implementation has one, which shows the check would catch it. The ring's program also
  has no dimension of the global batch size at all (its memory is linear in B / n).
  """
  _, ring, gather = LOSSES[name]
  b, global_b, dim = 32, 256, 16
  mesh = S.make_mesh(dict(data=8))
  emb = jax.ShapeDtypeStruct((global_b, dim), jnp.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)

  def compiled_shapes(fn):
    lowered = sharded_value_and_grad(fn, mesh).lower(emb, emb, scalar, scalar)
    return _shapes(lowered.compile().as_text())

  local_by_global = lambda s: b in s and global_b in s  # noqa: E731
  gather_shapes = compiled_shapes(gather)
  assert any(local_by_global(s) for s in gather_shapes), sorted(gather_shapes)
  ring_shapes = compiled_shapes(functools.partial(ring, tile_size=8))
  assert (8, 8) in ring_shapes, sorted(ring_shapes)  # the shape parser sees the tiles
  assert not any(local_by_global(s) for s in ring_shapes), sorted(ring_shapes)
  assert not any(global_b in s for s in ring_shapes), sorted(ring_shapes)


@pytest.mark.parametrize("scale", [1 / 0.07, 100.0])
@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_bf16_tile_precision_matches_fp32_reference(name, scale):
  """``precision="bf16"`` (config.loss.precision's default): fp32 embeddings, tiles multiplied in
  bf16 with f32 accumulation (chunks travel as bf16), against the fp32 whole-batch loss.

  The error is that of rounding the embeddings (and, in the backward pass, the tile gradients) to
  bf16 once. Measured on this data (B = 64, D = 64, seeds 0-3): value <= 0.36u, scale/bias
  gradients <= 0.34u, embedding gradients <= 3.3u of their largest element (softmax, s = 100).
  Tolerances: u for the value and scalar gradients, 8u for the embedding gradients (>= 2.4x).
  """
  plain, ring, _ = LOSSES[name]
  k = NUM_GRADS[name]
  rng = np.random.default_rng(0)
  raw = rng.standard_normal((64, 64))
  img = _normalize(raw).astype(np.float32)
  txt = _normalize(raw + 3.0 * rng.standard_normal((64, 64))).astype(np.float32)
  scale, bias = jnp.float32(scale), jnp.float32(BIAS[name])
  mesh = S.make_mesh(dict(data=2, fsdp=4))
  fn = functools.partial(ring, tile_size=4, precision="bf16")
  got_v, got_g = sharded_value_and_grad(fn, mesh)(img, txt, scale, bias)
  assert got_g[0].dtype == jnp.float32  # the gradient keeps the embeddings' dtype
  want_v, want_g = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))(img, txt, scale, bias)
  assert abs(float(got_v) - float(want_v)) <= BF16_U * abs(float(want_v))
  for g, w in zip(got_g[:2], want_g[:2]):
    assert 0 < _max_rel(g, w) <= 8 * BF16_U  # (not exact: the tiles did run in bf16)
  for g, w in zip(got_g[2:k], want_g[2:k]):
    assert abs(float(g) - float(w)) <= BF16_U * abs(float(w))


def test_precision_is_the_rings_own_key():
  from vlpt.config import default_config
  from vlpt.losses import build_loss

  loss = default_config().loss
  assert loss.precision == "bf16"
  with loss.unlocked():
    loss.precision = "highest"
  with pytest.raises(ValueError, match="config.loss.precision='highest' is the ring's tile precision"):
    build_loss(loss)
  loss.impl = "ring"
  build_loss(loss)
  loss.precision = "fp8"
  with pytest.raises(ValueError, match="choose one of"):
    build_loss(loss)
