"""Losses: public reference values, open_clip parity, and exact sharded gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlpt import sharding as S
from vlpt.losses import sigmoid_contrastive, softmax_contrastive
from vlpt.losses.contrastive import sigmoid_contrastive_sharded, softmax_contrastive_sharded


def reference_inputs(b, d, dtype=np.float64):
  i = np.arange(b)[:, None]
  j = np.arange(d)[None, :]
  img = np.sin(3 * i + j + 1)
  txt = img + 0.5 * np.cos(2 * i + 0.5 * j)
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  return norm(img).astype(dtype), norm(txt).astype(dtype)


# Public float64 reference values (shared/notes/reference-semantics.md).
TABLE = [
  ("softmax", 1 / 0.07, None, 0.5320747820584042, 0.7321850312531764),
  ("softmax", 100.0, None, 1.2668613918378517, 0.30398244781991957),
  ("sigmoid", 10.0, -10.0, 1.3051445556776058, 1.7740640219390398),
  ("sigmoid", 1 / 0.07, 0.0, 13.149731681830902, 33.728099710573645),
]


@pytest.mark.parametrize("name,scale,bias,v4,v8", TABLE)
def test_reference_values(name, scale, bias, v4, v8):
  for (b, d), expected in (((4, 3), v4), ((8, 16), v8)):
    img, txt = (jnp.asarray(x) for x in reference_inputs(b, d, np.float32))
    if name == "softmax":
      got = softmax_contrastive(img, txt, scale)
    else:
      got = sigmoid_contrastive(img, txt, scale, bias)
    np.testing.assert_allclose(float(got), expected, rtol=2e-6)


def random_embeddings(b, d, seed=0):
  rng = np.random.default_rng(seed)
  img = rng.standard_normal((b, d)).astype(np.float32)
  txt = (img + rng.standard_normal((b, d)).astype(np.float32)).astype(np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img, txt


def test_open_clip_parity(torch_reference):
  torch, open_clip = torch_reference
  from open_clip.loss import ClipLoss, SigLipLoss

  img, txt = random_embeddings(16, 32)
  for scale, bias in ((14.3, None), (10.0, -10.0)):
    ti = torch.tensor(img, requires_grad=True)
    tt = torch.tensor(txt, requires_grad=True)
    ts = torch.tensor(scale, requires_grad=True)
    if bias is None:
      ref = ClipLoss()(ti, tt, ts)
      fn = lambda i, t, s: softmax_contrastive(i, t, s)  # noqa: E731
      args = (img, txt, jnp.float32(scale))
    else:
      tb = torch.tensor(bias, requires_grad=True)
      ref = SigLipLoss()(ti, tt, ts, tb)
      fn = sigmoid_contrastive  # noqa: E731
      args = (img, txt, jnp.float32(scale), jnp.float32(bias))
    ref.backward()
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads[0], ti.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(grads[1], tt.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(float(grads[2]), ts.grad.item(), rtol=1e-5, atol=1e-6)
    if bias is not None:
      np.testing.assert_allclose(float(grads[3]), tb.grad.item(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "mesh_shape", [dict(data=8), dict(data=2, fsdp=4), dict(data=2, fsdp=2, tensor=2)]
)
@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_sharded_loss_equals_whole_batch(mesh_shape, loss):
  """Value and gradient of the sharded global loss equal the single-device whole-batch ones."""
  mesh = S.make_mesh(mesh_shape)
  img, txt = random_embeddings(32, 16, seed=1)
  scale, bias = jnp.float32(12.0), jnp.float32(-3.0)
  if loss == "softmax":
    plain = lambda i, t, s, b: softmax_contrastive(i, t, s)  # noqa: E731
    local = functools.partial(softmax_contrastive_sharded, axes=S.BATCH_AXES)
  else:
    plain = sigmoid_contrastive
    local = functools.partial(sigmoid_contrastive_sharded, axes=S.BATCH_AXES)
  spec = P(S.BATCH_AXES)
  sharded = jax.shard_map(
    lambda i, t, s, b: local(i, t, s, b)[0], mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P()
  )
  want_v, want_g = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))(img, txt, scale, bias)
  got_v, got_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(img, txt, scale, bias)
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)
  if loss == "softmax":  # a constant bias cancels in the softmax: zero gradient
    assert float(got_g[3]) == 0.0


def test_sharded_in_batch_accuracy():
  mesh = S.make_mesh(dict(data=8))
  img, _ = random_embeddings(16, 8, seed=3)
  txt = img.copy()
  txt[[0, 1]] = txt[[1, 0]]  # two swapped pairs: 14/16 correct
  spec = P(S.BATCH_AXES)
  f = jax.shard_map(
    lambda i, t: softmax_contrastive_sharded(i, t, 10.0, None, S.BATCH_AXES)[1],
    mesh=mesh,
    in_specs=(spec, spec),
    out_specs=P(),
  )
  m = jax.jit(f)(img, txt)
  assert float(m["i2t_acc"]) == pytest.approx(14 / 16)
  assert float(m["t2i_acc"]) == pytest.approx(14 / 16)


# ---- Tiled ring losses: equal to the whole-batch loss in value, gradient and accuracies ----

from vlpt.losses.ring import sigmoid_ring_sharded, softmax_ring_sharded  # noqa: E402


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@pytest.mark.parametrize(
  "mesh_shape,tile",
  [(dict(data=8), 4), (dict(data=2, fsdp=4), 2), (dict(data=2, fsdp=4), 8), (dict(data=8), 100)],
)
def test_ring_loss_equals_whole_batch(loss, mesh_shape, tile):
  mesh = S.make_mesh(mesh_shape)
  img, txt = random_embeddings(64, 16, seed=2)
  scale, bias = jnp.float32(12.0), jnp.float32(-3.0)
  if loss == "softmax":
    plain = lambda i, t, s, b: softmax_contrastive(i, t, s)  # noqa: E731
    ring, gather = softmax_ring_sharded, softmax_contrastive_sharded
  else:
    plain, ring, gather = sigmoid_contrastive, sigmoid_ring_sharded, sigmoid_contrastive_sharded
  spec = P(S.BATCH_AXES)

  def wrap(fn, out):
    return jax.shard_map(
      lambda i, t, s, b: out(fn(i, t, s, b, S.BATCH_AXES)),
      mesh=mesh,
      in_specs=(spec, spec, P(), P()),
      out_specs=P(),
    )

  ring_fn = functools.partial(ring, tile_size=tile)
  value = wrap(ring_fn, lambda r: r[0])
  want_v, want_g = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))(img, txt, scale, bias)
  got_v, got_g = jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2, 3)))(img, txt, scale, bias)
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)
  txt_swapped = txt.copy()
  txt_swapped[[0, 1]] = txt_swapped[[1, 0]]
  got_m = jax.jit(wrap(ring_fn, lambda r: r[1]))(img, txt_swapped, scale, bias)
  want_m = jax.jit(wrap(gather, lambda r: r[1]))(img, txt_swapped, scale, bias)
  for key in ("i2t_acc", "t2i_acc"):
    assert float(got_m[key]) == float(want_m[key])


def test_ring_tile_must_divide_local_batch():
  mesh = S.make_mesh(dict(data=8))
  img, txt = random_embeddings(48, 8)  # 6 rows per device
  spec = P(S.BATCH_AXES)
  f = jax.shard_map(
    lambda i, t: softmax_ring_sharded(i, t, 10.0, None, S.BATCH_AXES, tile_size=4)[0],
    mesh=mesh,
    in_specs=(spec, spec),
    out_specs=P(),
  )
  with pytest.raises(ValueError, match="tile size 4 must divide the per-device batch 6"):
    jax.jit(f)(img, txt)


def test_sharded_label_smoothing_equals_whole_batch():
  mesh = S.make_mesh(dict(data=4, fsdp=2))
  img, txt = random_embeddings(32, 16, seed=5)
  spec = P(S.BATCH_AXES)
  sharded = jax.shard_map(
    lambda i, t, s: softmax_contrastive_sharded(i, t, s, None, S.BATCH_AXES, label_smoothing=0.1)[0],
    mesh=mesh,
    in_specs=(spec, spec, P()),
    out_specs=P(),
  )
  plain = functools.partial(softmax_contrastive, label_smoothing=0.1)
  want_v, want_g = jax.value_and_grad(plain, argnums=(0, 1, 2))(img, txt, jnp.float32(9.0))
  got_v, got_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(img, txt, jnp.float32(9.0))
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)


# ---- The loss family ----

from vlpt.losses import leave_one_out_contrastive  # noqa: E402


def numpy_leave_one_out(img, txt, scale):
  """InfoLOOB / DCL straight from the equation, in float64."""
  z = scale * img.astype(np.float64) @ txt.astype(np.float64).T
  n = len(z)
  total = 0.0
  for i in range(n):
    neg_row = [z[i, j] for j in range(n) if j != i]
    neg_col = [z[j, i] for j in range(n) if j != i]
    total += (-z[i, i] + np.log(np.sum(np.exp(neg_row)))) / 2
    total += (-z[i, i] + np.log(np.sum(np.exp(neg_col)))) / 2
  return total / n


@pytest.mark.parametrize("mesh_shape", [dict(data=8), dict(data=2, fsdp=4)])
def test_leave_one_out_matches_equation_and_shards_exactly(mesh_shape):
  img, txt = random_embeddings(32, 16, seed=7)
  scale = 11.0
  want = numpy_leave_one_out(img, txt, scale)
  assert float(leave_one_out_contrastive(img, txt, scale)) == pytest.approx(want, rel=1e-6)
  mesh = S.make_mesh(mesh_shape)
  spec = P(S.BATCH_AXES)
  sharded = jax.shard_map(
    lambda i, t, s: softmax_contrastive_sharded(i, t, s, None, S.BATCH_AXES, leave_one_out=True)[0],
    mesh=mesh,
    in_specs=(spec, spec, P()),
    out_specs=P(),
  )
  want_v, want_g = jax.value_and_grad(leave_one_out_contrastive, argnums=(0, 1, 2))(
    img, txt, jnp.float32(scale)
  )
  got_v, got_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(img, txt, jnp.float32(scale))
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)


def test_matryoshka_sums_the_loss_over_renormalized_prefixes():
  from vlpt.losses import build_loss

  img, txt = random_embeddings(32, 16, seed=9)
  mesh = S.make_mesh(dict(data=8))
  spec = P(S.BATCH_AXES)
  fn = build_loss(
    {
      "name": "softmax",
      "impl": "gather",
      "tile_size": 4,
      "label_smoothing": 0.0,
      "matryoshka_dims": (4, 8, 16),
    }
  )
  sharded = jax.shard_map(
    lambda i, t, s: fn(i, t, s, jnp.float32(0.0), S.BATCH_AXES)[0],
    mesh=mesh,
    in_specs=(spec, spec, P()),
    out_specs=P(),
  )

  def plain(i, t, s):
    unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return sum(softmax_contrastive(unit(i[:, :m]), unit(t[:, :m]), s) for m in (4, 8, 16))

  want_v, want_g = jax.value_and_grad(plain, argnums=(0, 1))(img, txt, jnp.float32(10.0))
  got_v, got_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(img, txt, jnp.float32(10.0))
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)
  assert float(want_v) > float(softmax_contrastive(img, txt, 10.0))  # prefixes add terms


def test_caption_loss_matches_open_clip_coca(torch_reference):
  torch, _ = torch_reference
  from open_clip.loss import CoCaLoss

  from vlpt.losses.captioning import caption_loss

  rng = np.random.default_rng(11)
  logits = rng.standard_normal((4, 7, 30)).astype(np.float32)
  labels = rng.integers(1, 30, (4, 7))
  labels[0, 4:] = 0  # padding, ignored
  labels[2, 1:] = 0
  img, txt = random_embeddings(4, 8, seed=12)
  ref_clip, ref_cap = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)(
    torch.tensor(img), torch.tensor(txt), torch.tensor(logits), torch.tensor(labels), torch.tensor(10.0)
  )
  got = caption_loss(jnp.asarray(logits), jnp.asarray(labels), pad_id=0)
  np.testing.assert_allclose(2.0 * float(got), ref_cap.item(), rtol=1e-6)
  total = softmax_contrastive(img, txt, 10.0) + 2.0 * got  # CoCa's Eq. 3 weights
  np.testing.assert_allclose(float(total), ref_clip.item() + ref_cap.item(), rtol=1e-6)
  # The gradient only reaches non-pad positions.
  grad = jax.grad(lambda x: caption_loss(x, jnp.asarray(labels)))(jnp.asarray(logits))
  assert float(jnp.abs(grad[0, 4:]).max()) == 0.0 and float(jnp.abs(grad[0, :4]).max()) > 0


def numpy_align_uniform(img, txt, t=2.0):
  img, txt = img.astype(np.float64), txt.astype(np.float64)
  align = np.mean(np.sum((img - txt) ** 2, axis=1))

  def uniformity(x):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    off = ~np.eye(len(x), dtype=bool)
    return np.log(np.mean(np.exp(-t * d[off])))

  return align, (uniformity(img) + uniformity(txt)) / 2


def test_uniformity_alignment_matches_definition_and_shards_exactly():
  from vlpt.losses import build_loss, uniformity_alignment

  img, txt = random_embeddings(32, 16, seed=13)
  want_align, want_unif = numpy_align_uniform(img, txt)
  align, unif = uniformity_alignment(img, txt)
  assert float(align) == pytest.approx(want_align, rel=1e-5)
  assert float(unif) == pytest.approx(want_unif, rel=1e-5)
  fn = build_loss(
    {"name": "clip_align_uniform", "impl": "gather", "align_weight": 0.5, "uniform_weight": 2.0}
  )
  mesh = S.make_mesh(dict(data=4, fsdp=2))
  spec = P(S.BATCH_AXES)
  sharded = jax.shard_map(
    lambda i, t, s: fn(i, t, s, jnp.float32(0.0), S.BATCH_AXES)[0],
    mesh=mesh,
    in_specs=(spec, spec, P()),
    out_specs=P(),
  )

  def plain(i, t, s):
    a, u = uniformity_alignment(i, t)
    return softmax_contrastive(i, t, s) + 0.5 * a + 2.0 * u

  want_v, want_g = jax.value_and_grad(plain, argnums=(0, 1, 2))(img, txt, jnp.float32(10.0))
  got_v, got_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(img, txt, jnp.float32(10.0))
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)


def test_loss_keys_that_do_not_apply_are_refused():
  from vlpt.losses import build_loss

  with pytest.raises(ValueError, match="config.loss.align_weight does not apply"):
    build_loss({"name": "softmax", "align_weight": 3.0})
  with pytest.raises(ValueError, match="config.loss.label_smoothing does not apply"):
    build_loss({"name": "sigmoid", "label_smoothing": 0.1})
  build_loss({"name": "sigmoid", "label_smoothing": 0.0, "align_weight": 1.0})  # defaults pass


def test_distillation_matches_open_clip(torch_reference):
  torch, _ = torch_reference
  from open_clip.loss import DistillClipLoss

  from vlpt.losses.teacher import distillation_loss

  img, txt = random_embeddings(12, 8, seed=21)
  t_img, t_txt = random_embeddings(12, 8, seed=22)
  ti, tt = torch.tensor(img, requires_grad=True), torch.tensor(txt, requires_grad=True)
  ref_c, ref_d = DistillClipLoss()(
    ti, tt, torch.tensor(14.0), torch.tensor(t_img), torch.tensor(t_txt), torch.tensor(30.0)
  )
  (ref_c + ref_d).backward()

  def total(i, t):
    c, d = distillation_loss(i, t, 14.0, t_img, t_txt, 30.0)
    return c + d, (c, d)

  (value, (c, d)), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(img, txt)
  np.testing.assert_allclose(float(c), ref_c.item(), rtol=1e-6)
  np.testing.assert_allclose(float(d), ref_d.item(), rtol=1e-6)
  np.testing.assert_allclose(grads[0], ti.grad.numpy(), atol=1e-6)
  np.testing.assert_allclose(grads[1], tt.grad.numpy(), atol=1e-6)


def test_cwcl_matches_equation_and_reduces_to_clip_with_one_hot_weights():
  from vlpt.losses.teacher import cwcl_loss

  img, txt = random_embeddings(10, 8, seed=31)
  q_img, q_txt = random_embeddings(10, 8, seed=32)
  z = 9.0 * img.astype(np.float64) @ txt.astype(np.float64).T

  def direction(z, q):
    w = (1 + q.astype(np.float64) @ q.astype(np.float64).T) / 2
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return np.mean(-(w * logp).sum(1) / w.sum(1))

  want = (direction(z, q_img) + direction(z.T, q_txt)) / 2
  assert float(cwcl_loss(img, txt, 9.0, q_img, q_txt)) == pytest.approx(want, rel=1e-6)
  # A teacher that sees every example as identical weighs all pairs equally: the loss becomes
  # the mean negative log-probability over each whole row.
  ones = np.ones((10, 8), np.float32) / np.sqrt(8)
  uniform = float(cwcl_loss(img, txt, 9.0, ones, ones))
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  logq = z.T - np.log(np.exp(z.T).sum(1, keepdims=True))
  assert uniform == pytest.approx((np.mean(-logp.mean(1)) + np.mean(-logq.mean(1))) / 2, rel=1e-6)


@pytest.mark.parametrize("chunk", [0, 1, 5, 8, 64])
def test_chunked_token_nll_equals_the_whole_head_and_gradient(chunk):
  from vlpt.losses.captioning import chunked_token_nll, token_nll

  kh, kw, ky = jax.random.split(jax.random.key(0), 3)
  hidden = jax.random.normal(kh, (3, 21, 16))
  kernel = jax.random.normal(kw, (16, 300)) * 0.3
  labels = jax.random.randint(ky, (3, 21), 0, 300)

  def whole(h, w):
    return token_nll(h @ w, labels)

  def chunked(h, w):
    return chunked_token_nll(h, lambda x: x @ w, labels, chunk)

  np.testing.assert_allclose(chunked(hidden, kernel), whole(hidden, kernel), rtol=1e-6, atol=1e-6)
  weights = jax.random.uniform(ky, (3, 21))
  g_whole = jax.grad(lambda h, w: jnp.sum(whole(h, w) * weights), argnums=(0, 1))(hidden, kernel)
  g_chunk = jax.grad(lambda h, w: jnp.sum(chunked(h, w) * weights), argnums=(0, 1))(hidden, kernel)
  for a, b in zip(g_whole, g_chunk, strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_chunked_token_nll_holds_a_fraction_of_the_logits():
  """What the chunking is for: XLA's temporaries of the loss and its gradient with a large
  vocabulary shrink with the chunk (the whole [B, L, V] logits are 32 MiB here)."""
  from vlpt.losses.captioning import chunked_token_nll

  hidden = jax.ShapeDtypeStruct((4, 64, 32), jnp.float32)
  kernel = jax.ShapeDtypeStruct((32, 32768), jnp.float32)
  labels = jax.ShapeDtypeStruct((4, 64), jnp.int32)

  def temp_bytes(chunk):
    def loss(h, w, y):
      return jnp.mean(chunked_token_nll(h, lambda x: x @ w, y, chunk))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, kernel, labels).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = 4 * 64 * 32768 * 4
  whole, chunked = temp_bytes(0), temp_bytes(8)
  assert whole >= logits_bytes
  assert chunked < whole / 3
