"""Optimizer: AdamW with linear warmup + cosine decay, a weight-decay mask, clipping, freezing.

Parameter groups are picked by regular expressions over '/'-joined parameter paths
(e.g. ``image/transformer/blocks/0/attn/query``), so configs can say "no decay on norms and
biases" or "freeze the image tower" (LiT, Zhai et al. 2022) without touching model code. Frozen
parameters get ``optax.set_to_zero``: no update and no optimizer state.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax


def param_paths(params: Any) -> Any:
  """A tree of '/'-joined path strings with the structure of ``params``."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return jax.tree_util.tree_map_with_path(name, params)


def _matches(patterns: Sequence[str]):
  compiled = [re.compile(p) for p in patterns]
  return lambda path: any(c.search(path) for c in compiled)


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
  """True where weight decay applies: not matched by ``no_decay`` and not a scalar/vector."""
  skip = _matches(no_decay)
  return jax.tree.map(lambda p, x: bool(x.ndim >= 2 and not skip(p)), param_paths(params), params)


def frozen_labels(params: Any, freeze: Sequence[str]) -> Any:
  frozen = _matches(freeze)
  return jax.tree.map(lambda p: "frozen" if frozen(p) else "trainable", param_paths(params))


def learning_rate_schedule(config: Any) -> optax.Schedule:
  """Linear warmup from 0 to ``lr`` then cosine decay to ``lr * end_lr_factor``."""
  total = int(config.total_steps)
  warmup = min(int(config.optimizer.warmup_steps), total)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(config.optimizer.lr), warmup_steps=warmup,
      decay_steps=max(total, warmup + 1),
      end_value=float(config.optimizer.lr) * float(config.optimizer.end_lr_factor))


def build_optimizer(config: Any, params: Any) -> optax.GradientTransformation:
  """The full transformation for ``params`` (an abstract or concrete tree) from ``config``."""
  oc = config.optimizer
  if oc.name != "adamw":
    raise ValueError(f"unknown optimizer {oc.name!r}; vlpt supports 'adamw'")
  parts = []
  if oc.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(oc.grad_clip_norm)))
  parts.append(optax.adamw(learning_rate_schedule(config), b1=oc.b1, b2=oc.b2, eps=oc.eps,
                           weight_decay=oc.weight_decay,
                           mask=decay_mask(params, tuple(oc.no_decay))))
  tx = optax.chain(*parts)
  # LiT: a locked tower is frozen like any other pattern (no updates, no optimizer state)
  freeze = tuple(oc.freeze) + tuple(f"^{tower}/" for tower in config.model.get("lock_towers", ()))
  if freeze:
    tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                               frozen_labels(params, freeze))
  return tx
