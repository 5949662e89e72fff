"""A Gemma-sized (256k) text vocabulary, sharded: the token embedding's rows split over the mesh's
tensor axis (logical "vocab"), looked up without ever gathering the whole table (each device reads
its rows, masked, then one all-reduce of the activations), with the single-device result."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpt import sharding as S
from vlpt.models import build_model

VOCAB = 256_000  # SigLIP 2's Gemma tokenizer (arXiv:2502.14786, Sec. 2.1)
MODEL = dict(
  name="clip",
  embed_dim=32,
  image=dict(variant="micro/8", image_size=32),
  text=dict(variant="micro", vocab_size=VOCAB, context_length=16),
)


def test_a_256k_vocabulary_is_looked_up_shard_by_shard():
  model = build_model(MODEL, nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (8, 16)), jnp.int32)
  want = model.encode_text(ids)
  graphdef, params = nnx.split(model, nnx.Param)
  mesh = S.make_mesh(dict(data=4, fsdp=1, tensor=2))  # (micro towers have 2 heads)
  shardings = S.param_shardings(params, mesh, S.DEFAULT_RULES).to_pure_dict()
  table_sharding = shardings["text"]["token_embedding"]
  assert table_sharding.spec[0] == "tensor"  # rows split two ways
  params = jax.device_put(params.to_pure_dict(), shardings)
  table = params["text"]["token_embedding"]
  assert {s.data.shape for s in table.addressable_shards} == {(VOCAB // 2, 64)}

  def encode(p, t):
    return nnx.merge(graphdef, p).encode_text(t)

  with S.activate(mesh, S.DEFAULT_RULES):
    compiled = jax.jit(encode).lower(params, jax.device_put(ids, S.batch_sharding(mesh, 2))).compile()
    got = compiled(params, jax.device_put(ids, S.batch_sharding(mesh, 2)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6)
  hlo = compiled.as_text()
  gathered = [
    line for line in hlo.splitlines() if "all-gather" in line and re.search(rf"\[{VOCAB},", line)
  ]
  assert not gathered, gathered[:2]  # the table is never assembled on a device
  # what each device holds: its half of the table (fp32), not the 65.5 MB of the whole
  assert compiled.memory_analysis().argument_size_in_bytes < VOCAB * 64 * 4 / 2 * 1.2
