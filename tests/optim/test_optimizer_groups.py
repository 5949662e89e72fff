"""Parameter groups of the optimizer: the weight-decay mask (freezing: tests/config/test_recipes.py
for every optimizer, tests/models/test_model_zoo.py through config.init.lock_towers)."""

import jax.numpy as jnp

from vlpt.optim import decay_mask


def toy_params():
  return {
    "image": {"proj": {"kernel": jnp.ones((4, 3))}, "ln_post": {"scale": jnp.ones(4)}},
    "text": {"token_embedding": jnp.ones((5, 4)), "proj": {"kernel": jnp.ones((4, 3))}},
    "logit_scale": jnp.asarray(2.0),
  }


def test_decay_mask_skips_vectors_scalars_and_patterns():
  mask = decay_mask(toy_params(), ("embedding",))
  assert mask["image"]["proj"]["kernel"] and mask["text"]["proj"]["kernel"]
  assert not mask["image"]["ln_post"]["scale"] and not mask["logit_scale"]
  assert not mask["text"]["token_embedding"]
