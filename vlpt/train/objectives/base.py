"""What an objective is: the forward pass of a training step, its loss terms and their names.

An :class:`Objective` owns everything between the parameters and the scalar loss: how the model
reads a batch (normalization, patch-dropout keys, locked towers), which loss it computes and how
(sharded over the mesh or on global arrays), and the extra terms it reports. The step
(:mod:`vlpt.train.step`) differentiates it, applies the optimizer and logs; the loop never asks
which objective runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.data.normalization import normalize_images
from vlpt.models.vit import NAFLEX_KEYS


class Objective:
  """The base: the model merged with locked towers held by ``stop_gradient``; subclasses define
  :meth:`loss` (and may override :meth:`value_and_grad`)."""

  # loss terms reported besides the total, as train/<term> (each objective's own)
  extra_terms: tuple[str, ...] = ()

  @classmethod
  def applies(cls, config: Any) -> bool:
    """Whether this objective is the one ``config`` asks for (the first that applies runs)."""
    raise NotImplementedError

  @classmethod
  def check_config(cls, config: Any) -> None:
    """This objective's cross-section rules (ValueError naming the fix); nothing is built."""

  def __init__(self, setup: Any):
    self.config = setup.config
    self.mesh = setup.mesh
    self.graphdef = setup.graphdef
    self.locked = tuple(setup.config.init.lock_towers)

  # -- inputs besides (params, batch): e.g. a teacher's parameters, passed to the jitted step
  # as a non-donated argument so they are never checkpointed or updated

  def aux_inputs(self) -> tuple[Any, Any]:
    """(arrays, their shardings) given to every step; ``(None, None)`` when there are none."""
    return None, None

  def step_inputs(self, state: Any, aux: Any) -> Any:
    """What the step passes to :meth:`value_and_grad` as ``aux``: :meth:`aux_inputs`' arrays, or,
    for an objective that reads the train state (an EMA teacher), those and the state's parts."""
    del state
    return aux

  # -- the forward pass

  def model(self, params: Any) -> nnx.Module:
    """The model over ``params``; locked towers (LiT) see theirs through ``stop_gradient``, so
    no backward pass runs through them."""
    if self.locked:
      params = {k: jax.lax.stop_gradient(v) if k in self.locked else v for k, v in params.items()}
    return nnx.merge(self.graphdef, params)

  def normalized(self, images: jax.Array) -> jax.Array:
    """The batch's uint8 images as the towers read them (``config.data.normalization``)."""
    return normalize_images(images, self.config.data.normalization)

  def image_input(self, batch: dict[str, jax.Array]) -> Any:
    """What the image tower reads from a batch: normalized images, or the NaFlex dict of a
    token-budget batch (patches normalized on the host, :mod:`vlpt.data.naflex`)."""
    if "pixel_values" in batch:
      return {k: batch[k] for k in NAFLEX_KEYS}
    return self.normalized(batch["image"])

  @staticmethod
  def dropout_rng(keys: jax.Array | None) -> jax.Array | None:
    """Per-example patch-dropout keys (raw key data in the batch) as typed keys."""
    return None if keys is None else jax.random.wrap_key_data(keys)

  def logit_params(self, params: Any) -> tuple[jax.Array, jax.Array]:
    """(temperature, bias; 0 when the model has none), never through a locked tower."""
    out = nnx.merge(self.graphdef, params).logit_params()
    return out["logit_scale"], out.get("logit_bias", jnp.zeros((), jnp.float32))

  def loss(
    self, params: Any, batch: dict[str, jax.Array], aux: Any = None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(the global loss, metrics: i2t_acc, t2i_acc and every term of :attr:`extra_terms`)."""
    raise NotImplementedError

  def value_and_grad(self, params: Any, batch: dict[str, jax.Array], aux: Any = None):
    """((loss, metrics), gradient with respect to ``params``)."""
    return jax.value_and_grad(self.loss, has_aux=True)(params, batch, aux)
