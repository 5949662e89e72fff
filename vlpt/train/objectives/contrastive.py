"""CLIP / SigLIP / ALIGN and the contrastive family: both towers embed the batch and one global
contrastive loss (``config.loss``) compares every image with every text of every device.

The loss runs inside ``shard_map`` over the batch axes, on each device's block of embeddings
(all-gathered or passed around a ring by the loss itself, :mod:`vlpt.losses`). With
``config.accumulation_steps = k > 1`` the gradient is accumulated exactly over k micro-batches
(GradCache, :mod:`vlpt.train.accumulation`).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec as P

from vlpt import sharding as S
from vlpt.losses import build_loss, is_teacher_loss
from vlpt.train.accumulation import accumulated_value_and_grad
from vlpt.train.objectives.base import Objective


class ContrastiveObjective(Objective):
  @classmethod
  def applies(cls, config: Any) -> bool:
    return True  # the default

  @classmethod
  def check_config(cls, config: Any) -> None:
    if config.teacher.checkpoint and not is_teacher_loss(config.loss.name):
      raise ValueError(
        f"config.teacher.checkpoint is used by the teacher losses only (distill, "
        f"cwcl), not config.loss.name={config.loss.name!r}"
      )
    if config.loss.name == "sigmoid" and config.model.init_logit_bias is None:
      raise ValueError(
        "config.loss.name='sigmoid' needs a logit bias: set "
        "config.model.init_logit_bias (SigLIP: -10.0, with init_logit_scale ln 10)"
      )
    dims = tuple(config.loss.matryoshka_dims or ())
    if dims and max(dims) > config.model.embed_dim:
      raise ValueError(
        f"config.loss.matryoshka_dims={dims} exceeds config.model.embed_dim={config.model.embed_dim}"
      )

  def __init__(self, setup: Any):
    super().__init__(setup)
    loss_fn = build_loss(self.config.loss)
    batch_spec = P(S.BATCH_AXES)

    def global_loss(image_emb, text_emb, scale, bias):
      return loss_fn(image_emb, text_emb, scale, bias, S.BATCH_AXES)

    # (image_emb, text_emb, scale, bias) -> (global loss, metrics), the same on every device
    self.sharded_loss = jax.shard_map(
      global_loss, mesh=self.mesh, in_specs=(batch_spec, batch_spec, P(), P()), out_specs=(P(), P())
    )
    self.micro_batches = int(self.config.accumulation_steps)
    self.batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def embed(
    self, params: Any, images: jax.Array, text: jax.Array, keys: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """uint8 images (or a NaFlex dict, already normalized) and token ids -> L2-normalized
    (image, text) embeddings."""
    model = self.model(params)
    images = images if isinstance(images, dict) else self.normalized(images)
    return (model.encode_image(images, dropout_rng=self.dropout_rng(keys)), model.encode_text(text))

  def loss(self, params, batch, aux=None):
    images = batch["image"] if "image" in batch else self.image_input(batch)
    image_emb, text_emb = self.embed(params, images, batch["text"], batch.get("keys"))
    return self.sharded_loss(image_emb, text_emb, *self.logit_params(params))

  def value_and_grad(self, params, batch, aux=None):
    if self.micro_batches == 1:
      return super().value_and_grad(params, batch, aux)
    extra = (batch["keys"],) if "keys" in batch else ()
    return accumulated_value_and_grad(
      self.embed,
      self.logit_params,
      self.sharded_loss,
      params,
      batch["image"],
      batch["text"],
      *extra,
      k=self.micro_batches,
      n=self.batch_shards,
    )
