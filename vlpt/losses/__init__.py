"""Contrastive losses, chosen by ``config.loss.name``.

Public API: ``softmax_contrastive`` and ``sigmoid_contrastive`` (whole-batch arrays, no mesh
needed). The trainer uses the registered sharded forms, which compute the same global loss from
per-device blocks inside ``shard_map``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vlpt.losses.captioning import caption_loss, coca_loss
from vlpt.losses.contrastive import (leave_one_out_contrastive, sigmoid_contrastive,
                                     sigmoid_contrastive_sharded, softmax_contrastive,
                                     softmax_contrastive_sharded,
                                     softmax_uniformity_alignment_sharded, uniformity_alignment)
from vlpt.losses.ring import sigmoid_ring_sharded, softmax_ring_sharded
from vlpt.registry import Registry

# Each entry: (loss config) -> fn(image_emb, text_emb, logit_scale, logit_bias, axes)
#   -> (global loss, metrics), run inside shard_map over the batch axes.
LOSSES: Registry[Callable[..., Callable]] = Registry("loss")


IMPLEMENTATIONS = ("gather", "ring")


def _check_impl(impl: str) -> None:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"config.loss.impl={impl!r}: choose 'gather' (all-gather, b x B logits per "
                     f"device) or 'ring' (tiled ring, memory linear in B/n)")


@LOSSES.register("softmax")
def _softmax(label_smoothing: float = 0.0, impl: str = "gather", tile_size: int = 4096
             ) -> Callable:
  _check_impl(impl)
  if impl == "ring":
    if label_smoothing:
      raise ValueError("config.loss.label_smoothing needs impl='gather' (the ring folds rows into "
                       "log-sum-exps and has no smoothed targets)")
    return functools.partial(softmax_ring_sharded, tile_size=tile_size)
  return functools.partial(softmax_contrastive_sharded, label_smoothing=label_smoothing)


@LOSSES.register("sigmoid")
def _sigmoid(impl: str = "gather", tile_size: int = 4096) -> Callable:
  _check_impl(impl)
  if impl == "ring":
    return functools.partial(sigmoid_ring_sharded, tile_size=tile_size)
  return sigmoid_contrastive_sharded


def _gather_only(name: str, impl: str) -> None:
  if impl != "gather":
    raise ValueError(f"config.loss.name={name!r} needs config.loss.impl='gather' (its "
                     f"normalizers or extra terms are not in the ring)")


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
def _clip_align_uniform(impl: str = "gather", align_weight: float = 1.0,
                        uniform_weight: float = 1.0) -> Callable:
  """CLIP + alignment + uniformity (Fahim et al. 2024; Wang & Isola 2020)."""
  _gather_only("clip_align_uniform", impl)
  return functools.partial(softmax_uniformity_alignment_sharded, align_weight=align_weight,
                           uniform_weight=uniform_weight)


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
      raise ValueError(f"matryoshka dim {dims[-1]} exceeds the embedding size "
                       f"{image_emb.shape[-1]}")
    total, metrics = 0.0, {}
    for dim in dims:
      value, metrics = loss_fn(_prefix(image_emb, dim), _prefix(text_emb, dim), logit_scale,
                               logit_bias, axes)
      total = total + value
    return total, metrics

  return wrapped


def build_loss(loss_config: Any) -> Callable:
  """``config.loss`` -> fn(image_emb, text_emb, scale, bias, axes) -> (global loss, metrics)."""
  kwargs = dict(loss_config.to_dict() if hasattr(loss_config, "to_dict") else loss_config)
  name = kwargs.pop("name")
  dims = tuple(kwargs.pop("matryoshka_dims", ()) or ())
  if dims and any(int(d) <= 0 for d in dims):
    raise ValueError(f"config.loss.matryoshka_dims must be positive, got {dims}")
  builder = LOSSES.get(name)
  accepted = inspect.signature(builder).parameters
  from vlpt.config import default_config  # the defaults of every loss key
  defaults = default_config().loss
  for key in [k for k in kwargs if k not in accepted]:
    if kwargs.pop(key) != defaults.get(key):
      raise ValueError(f"config.loss.{key} does not apply to config.loss.name={name!r}")
  fn = builder(**kwargs)
  return matryoshka(fn, dims) if dims else fn


__all__ = ["LOSSES", "build_loss", "caption_loss", "coca_loss", "leave_one_out_contrastive",
           "sigmoid_contrastive", "softmax_contrastive", "uniformity_alignment"]
