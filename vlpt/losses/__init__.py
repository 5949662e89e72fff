"""Contrastive losses, chosen by ``config.loss.name``.

Public API: ``softmax_contrastive`` and ``sigmoid_contrastive`` (whole-batch arrays, no mesh
needed). The trainer uses the registered sharded forms, which compute the same global loss from
per-device blocks inside ``shard_map``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vlpt.config import default_config
from vlpt.losses.captioning import caption_loss
from vlpt.losses.contrastive import (
  leave_one_out_contrastive,
  sigmoid_contrastive,
  sigmoid_contrastive_sharded,
  softmax_contrastive,
  softmax_contrastive_sharded,
  softmax_uniformity_alignment_sharded,
  uniformity_alignment,
)
from vlpt.losses.ring import check_precision, sigmoid_ring_sharded, softmax_ring_sharded
from vlpt.losses.teacher import cwcl_loss, distillation_loss
from vlpt.registry import Registry

# Each entry: (loss config) -> fn(image_emb, text_emb, logit_scale, logit_bias, axes)
#   -> (global loss, metrics), run inside shard_map over the batch axes.
LOSSES: Registry[Callable[..., Callable]] = Registry("loss")


IMPLEMENTATIONS = ("gather", "ring")


def _check_impl(impl: str) -> None:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(
      f"config.loss.impl={impl!r}: choose 'gather' (all-gather, b x B logits per "
      f"device) or 'ring' (tiled ring, memory linear in B/n)"
    )


@LOSSES.register("softmax")
def _softmax(
  label_smoothing: float = 0.0, impl: str = "gather", tile_size: int = 4096, precision: str = "bf16"
) -> Callable:
  _check_impl(impl)
  _check_precision(impl, precision)
  if impl == "ring":
    if label_smoothing:
      raise ValueError(
        "config.loss.label_smoothing needs impl='gather' (the ring folds rows into "
        "log-sum-exps and has no smoothed targets)"
      )
    return functools.partial(softmax_ring_sharded, tile_size=tile_size, precision=precision)
  return functools.partial(softmax_contrastive_sharded, label_smoothing=label_smoothing)


@LOSSES.register("sigmoid")
def _sigmoid(impl: str = "gather", tile_size: int = 4096, precision: str = "bf16") -> Callable:
  _check_impl(impl)
  _check_precision(impl, precision)
  if impl == "ring":
    return functools.partial(sigmoid_ring_sharded, tile_size=tile_size, precision=precision)
  return sigmoid_contrastive_sharded


def _check_precision(impl: str, precision: str) -> None:
  check_precision(precision)
  if impl != "ring" and precision != "bf16":
    raise ValueError(
      f"config.loss.precision={precision!r} is the ring's tile precision (config.loss.impl='ring'); "
      "the gather loss computes in the embeddings' dtype"
    )


def _gather_only(name: str, impl: str) -> None:
  if impl != "gather":
    raise ValueError(
      f"config.loss.name={name!r} needs config.loss.impl='gather' (its "
      f"normalizers or extra terms are not in the ring)"
    )


@LOSSES.register("infoloob")
def _infoloob(impl: str = "gather") -> Callable:
  """InfoLOOB (CLOOB, Fürst et al. 2022); see ``leave_one_out_contrastive``."""
  _gather_only("infoloob", impl)
  return functools.partial(softmax_contrastive_sharded, leave_one_out=True)


@LOSSES.register("dcl")
def _dcl(impl: str = "gather") -> Callable:
  """Decoupled contrastive loss (Yeh et al. 2022, Eq. 6): the same leave-one-out normalizer."""
  _gather_only("dcl", impl)
  return functools.partial(softmax_contrastive_sharded, leave_one_out=True)


@LOSSES.register("clip_align_uniform")
def _clip_align_uniform(
  impl: str = "gather", align_weight: float = 1.0, uniform_weight: float = 1.0
) -> Callable:
  """CLIP + alignment + uniformity (Fahim et al. 2024; Wang & Isola 2020)."""
  _gather_only("clip_align_uniform", impl)
  return functools.partial(
    softmax_uniformity_alignment_sharded, align_weight=align_weight, uniform_weight=uniform_weight
  )


def _prefix(x, dim: int):
  x = x[:, :dim]
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def matryoshka(loss_fn: Callable, dims: tuple[int, ...]) -> Callable:
  """Matryoshka representation learning (Kusupati et al. 2022, Eq. 2 with c_m = 1).

  The loss summed over nested prefixes ``x[:, :m]`` of the embeddings, each re-normalized, so
  every prefix is a usable smaller embedding. Metrics are those of the largest prefix.
  """
  dims = tuple(sorted(int(d) for d in dims))

  def wrapped(image_emb, text_emb, logit_scale, logit_bias, axes):
    if dims[-1] > image_emb.shape[-1]:
      raise ValueError(f"matryoshka dim {dims[-1]} exceeds the embedding size {image_emb.shape[-1]}")
    total, metrics = 0.0, {}
    for dim in dims:
      value, metrics = loss_fn(
        _prefix(image_emb, dim), _prefix(text_emb, dim), logit_scale, logit_bias, axes
      )
      total = total + value
    return total, metrics

  return wrapped


# Losses that need a frozen teacher (``config.teacher.checkpoint``): (loss config) ->
# fn(image_emb, text_emb, logit_scale, teacher_image_emb, teacher_text_emb, teacher_logit_scale)
#   -> (loss, metrics), on whole-batch (global) arrays under jit. They need the teacher's full
# B x B similarities, so they are dense forms that XLA partitions (no ring variant).
TEACHER_LOSSES: Registry[Callable[..., Callable]] = Registry("teacher loss")


def _in_batch_accuracies(logits: jax.Array) -> dict[str, jax.Array]:
  labels = jnp.arange(logits.shape[0])
  return {
    "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == labels),
    "t2i_acc": jnp.mean(jnp.argmax(logits, axis=0) == labels),
  }


@TEACHER_LOSSES.register("distill")
def _distill(impl: str = "gather", distill_weight: float = 1.0) -> Callable:
  """CLIP loss + distillation of the teacher's in-batch distributions (open_clip's
  DistillClipLoss: Hinton et al. 2015 applied to both softmax directions)."""
  _gather_only("distill", impl)

  def fn(image_emb, text_emb, scale, t_image, t_text, t_scale):
    contrastive, distill = distillation_loss(image_emb, text_emb, scale, t_image, t_text, t_scale)
    metrics = _in_batch_accuracies(image_emb @ text_emb.T)
    return contrastive + distill_weight * distill, {
      **metrics,
      "contrastive_loss": contrastive,
      "distill_loss": distill,
    }

  return fn


@TEACHER_LOSSES.register("cwcl")
def _cwcl(impl: str = "gather") -> Callable:
  """Continuously weighted contrastive loss (Srinivasa et al. 2023): soft targets from the
  frozen teacher's intra-modal similarities."""
  _gather_only("cwcl", impl)

  def fn(image_emb, text_emb, scale, t_image, t_text, t_scale):
    del t_scale
    return (
      cwcl_loss(image_emb, text_emb, scale, t_image, t_text),
      _in_batch_accuracies(image_emb @ text_emb.T),
    )

  return fn


# config.loss keys an objective reads (not a loss function's arguments)
OBJECTIVE_KEYS = ("caption_weight", "decoder_weight", "parallel_fraction", "decoder_chunk_length")


def _filtered_kwargs(builder: Callable, name: str, kwargs: dict) -> dict:
  """The builder's own keys of ``config.loss``; any other key must keep its default."""
  accepted = inspect.signature(builder).parameters
  defaults = default_config().loss
  for key in OBJECTIVE_KEYS:
    kwargs.pop(key, None)
  for key in [k for k in kwargs if k not in accepted]:
    if kwargs.pop(key) != defaults.get(key):
      raise ValueError(f"config.loss.{key} does not apply to config.loss.name={name!r}")
  return kwargs


def build_teacher_loss(loss_config: Any) -> Callable:
  """``config.loss`` (a teacher loss) -> its dense whole-batch function."""
  kwargs = dict(loss_config.to_dict() if hasattr(loss_config, "to_dict") else loss_config)
  name = kwargs.pop("name")
  if kwargs.pop("matryoshka_dims", ()):
    raise ValueError(f"config.loss.matryoshka_dims does not apply to config.loss.name={name!r}")
  builder = TEACHER_LOSSES.get(name)
  return builder(**_filtered_kwargs(builder, name, kwargs))


def is_teacher_loss(name: str) -> bool:
  """Whether ``config.loss.name`` needs a frozen teacher (``config.teacher.checkpoint``)."""
  return name in TEACHER_LOSSES


def check_config(loss_config: Any) -> None:
  """``config.loss`` -> ValueError naming the first problem (the loss is built, then dropped)."""
  name = loss_config["name"]
  if name not in LOSSES and name not in TEACHER_LOSSES:
    raise ValueError(
      f"config.loss.name={name!r} is not one of: {', '.join(LOSSES.names() + TEACHER_LOSSES.names())}"
    )
  (build_teacher_loss if is_teacher_loss(name) else build_loss)(loss_config)


def build_loss(loss_config: Any) -> Callable:
  """``config.loss`` -> fn(image_emb, text_emb, scale, bias, axes) -> (global loss, metrics)."""
  kwargs = dict(loss_config.to_dict() if hasattr(loss_config, "to_dict") else loss_config)
  name = kwargs.pop("name")
  dims = tuple(kwargs.pop("matryoshka_dims", ()) or ())
  if dims and any(int(d) <= 0 for d in dims):
    raise ValueError(f"config.loss.matryoshka_dims must be positive, got {dims}")
  builder = LOSSES.get(name)
  fn = builder(**_filtered_kwargs(builder, name, kwargs))
  return matryoshka(fn, dims) if dims else fn


__all__ = [
  "LOSSES",
  "TEACHER_LOSSES",
  "build_loss",
  "build_teacher_loss",
  "caption_loss",
  "check_config",
  "is_teacher_loss",
  "cwcl_loss",
  "distillation_loss",
  "leave_one_out_contrastive",
  "sigmoid_contrastive",
  "softmax_contrastive",
  "uniformity_alignment",
]
