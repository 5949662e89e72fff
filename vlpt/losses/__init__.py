"""Contrastive losses, chosen by ``config.loss.name``.

Public API: ``softmax_contrastive`` and ``sigmoid_contrastive`` (whole-batch arrays, no mesh
needed). The trainer uses the registered sharded forms, which compute the same global loss from
per-device blocks inside ``shard_map``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vlpt.losses.contrastive import (leave_one_out_contrastive, sigmoid_contrastive,
                                     sigmoid_contrastive_sharded, softmax_contrastive,
                                     softmax_contrastive_sharded)
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
def _sigmoid(impl: str = "gather", tile_size: int = 4096, label_smoothing: float = 0.0
             ) -> Callable:
  _check_impl(impl)
  if label_smoothing:
    raise ValueError("config.loss.label_smoothing applies to the softmax loss only")
  if impl == "ring":
    return functools.partial(sigmoid_ring_sharded, tile_size=tile_size)
  return sigmoid_contrastive_sharded


def _leave_one_out(name: str, impl: str, label_smoothing: float) -> Callable:
  if impl != "gather":
    raise ValueError(f"config.loss.name={name!r} needs config.loss.impl='gather'")
  if label_smoothing:
    raise ValueError(f"config.loss.label_smoothing does not apply to {name!r}")
  return functools.partial(softmax_contrastive_sharded, leave_one_out=True)


@LOSSES.register("infoloob")
def _infoloob(impl: str = "gather", tile_size: int = 4096, label_smoothing: float = 0.0
              ) -> Callable:
  """InfoLOOB (CLOOB, Fürst et al. 2022); see ``leave_one_out_contrastive``."""
  del tile_size
  return _leave_one_out("infoloob", impl, label_smoothing)


@LOSSES.register("dcl")
def _dcl(impl: str = "gather", tile_size: int = 4096, label_smoothing: float = 0.0) -> Callable:
  """Decoupled contrastive loss (Yeh et al. 2022, Eq. 6): the same leave-one-out normalizer."""
  del tile_size
  return _leave_one_out("dcl", impl, label_smoothing)


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
  fn = LOSSES.get(name)(**kwargs)
  return matryoshka(fn, dims) if dims else fn


__all__ = ["LOSSES", "build_loss", "leave_one_out_contrastive", "sigmoid_contrastive",
           "softmax_contrastive"]
