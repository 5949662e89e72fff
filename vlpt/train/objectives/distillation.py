"""The teacher losses (``config.loss.name`` "distill" or "cwcl"): the student's in-batch
similarities are compared with a frozen teacher's (``config.teacher.checkpoint``).

The teacher is any checkpoint vlpt reads, placed on the training mesh with its own logical
shardings and passed to the jitted step as a non-donated input (never updated or checkpointed).
It reads the batch at its own normalization and resolution and the student's token ids, so its
tokenizer must map text to the same ids. The losses are dense forms on global arrays
(:data:`vlpt.losses.TEACHER_LOSSES`), partitioned by XLA.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from vlpt import sharding as S
from vlpt.data.normalization import standardize
from vlpt.data.tokenizers import build_tokenizer
from vlpt.errors import ConfigError, WeightsError
from vlpt.losses import build_teacher_loss, is_teacher_loss
from vlpt.models import build_model
from vlpt.train.initialization import place, read_checkpoint
from vlpt.train.objectives.base import Objective
from vlpt.weights.formats import detect_format
from vlpt.weights.resize import resize_model
from vlpt.weights.state import pure_tree

# texts that tell tokenizers apart (case, punctuation, digits, non-ASCII)
_TOKENIZER_PROBES = ["a photo of a cat", "A RED circle, next to 2 squares!", "Ünïcode & 🙂"]


@dataclasses.dataclass
class Teacher:
  """A frozen model placed on the training mesh."""

  graphdef: nnx.GraphDef
  params: Any
  shardings: Any
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int


def load_teacher(setup: Any) -> Teacher:
  """``config.teacher.checkpoint`` read, checked against the data's tokenizer, and placed."""
  config = setup.config
  path = config.teacher.checkpoint
  try:
    bundle = read_checkpoint(path)
  except (WeightsError, ValueError) as e:
    raise ConfigError(f"config.teacher.checkpoint={path!r}: {e}") from None
  tok = setup.tokenizer
  if bundle.tokenizer:
    theirs = build_tokenizer(dict(bundle.tokenizer, context_length=tok.context_length))
    if not np.array_equal(theirs(_TOKENIZER_PROBES), tok(_TOKENIZER_PROBES)):
      raise ConfigError(
        f"config.teacher.checkpoint={path!r} tokenizes text differently from "
        f"config.data.tokenizer ({config.data.tokenizer.name}); the teacher reads "
        "the same token ids as the student, so use its tokenizer"
      )
  if bundle.model["text"]["vocab_size"] < tok.vocab_size:
    raise ConfigError(
      f"the teacher's vocabulary ({bundle.model['text']['vocab_size']}) is "
      f"smaller than config.data.tokenizer's ({tok.vocab_size})"
    )
  model_cfg, flat = resize_model(bundle.model, bundle.params, context_length=tok.context_length)
  model_cfg = dict(model_cfg, dtype=config.model.dtype, attention=config.model.attention)
  abstract = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  shardings = S.param_shardings(abstract_params, setup.mesh, setup.rules).to_pure_dict()
  params = jax.tree.map(place, pure_tree(abstract, flat), shardings)
  pre = bundle.preprocess
  return Teacher(graphdef, params, shardings, tuple(pre.mean), tuple(pre.std), pre.image_size)


class DistillationObjective(Objective):
  @classmethod
  def applies(cls, config: Any) -> bool:
    return is_teacher_loss(config.loss.name)

  @classmethod
  def check_config(cls, config: Any) -> None:
    if not config.teacher.checkpoint:
      raise ValueError(
        f"config.loss.name={config.loss.name!r} needs a teacher: set "
        "config.teacher.checkpoint to a checkpoint vlpt.load accepts"
      )
    try:
      detect_format(config.teacher.checkpoint)
    except WeightsError as e:
      raise ValueError(f"config.teacher.checkpoint: {e}") from None
    if config.model.name in ("coca", "locca") or config.accumulation_steps > 1:
      raise ValueError("teacher losses are not supported with CoCa, LocCa or accumulation_steps > 1")

  def __init__(self, setup: Any):
    super().__init__(setup)
    self.teacher_loss = build_teacher_loss(self.config.loss)
    self.teacher = load_teacher(setup)
    self.extra_terms = ("contrastive_loss", "distill_loss") if self.config.loss.name == "distill" else ()

  def aux_inputs(self):
    return self.teacher.params, self.teacher.shardings

  def teacher_embeddings(self, teacher_params: Any, batch: dict[str, jax.Array]):
    """(image embeddings, text embeddings, temperature) of the frozen teacher."""
    teacher = self.teacher
    model = nnx.merge(teacher.graphdef, teacher_params)
    images = standardize(batch["image"], teacher.mean, teacher.std)
    if images.shape[1] != teacher.image_size:
      b, _, _, c = images.shape
      images = jax.image.resize(images, (b, teacher.image_size, teacher.image_size, c), "bicubic")
    out = (
      model.encode_image(images),
      model.encode_text(batch["text"]),
      model.logit_params()["logit_scale"],
    )
    return jax.lax.stop_gradient(out)

  def loss(self, params, batch, aux=None):
    model = self.model(params)
    image_emb = model.encode_image(
      self.normalized(batch["image"]), dropout_rng=self.dropout_rng(batch.get("keys"))
    )
    text_emb = model.encode_text(batch["text"])
    return self.teacher_loss(
      image_emb, text_emb, self.logit_params(params)[0], *self.teacher_embeddings(aux, batch)
    )


__all__ = ["DistillationObjective", "Teacher", "load_teacher"]
