"""Optimizers (AdamW, LAMB, Adafactor) with linear warmup + cosine or linear decay, a weight-decay
mask, gradient clipping and freezing.

``config.optimizer.name``:

- ``adamw`` (default): ``optax.adamw`` (Loshchilov & Hutter 2019), decoupled weight decay.
- ``lamb``: ``optax.lamb`` (You et al. 2020, layer-wise trust ratio; ALIGN's optimizer).
- ``adafactor``: factored second moments (Shazeer & Stern 2018) for matrices, with the decay rate
  ``1 - t^-0.8`` capped at ``b2`` and first-moment momentum ``b1`` (the "ViT-Adafactor" form used
  by CoCa, LiT and SigLIP), then decoupled weight decay. The factored statistics (one row and one
  column vector per matrix) are replicated over the mesh; the momentum is sharded like its
  parameter.

``config.optimizer.eps`` is each optimizer's own epsilon: AdamW's and LAMB's is added to the root
of the second moment (1e-6 when None); Adafactor's is epsilon1 of Shazeer & Stern (2018, Alg. 4),
added to the squared gradient before it is averaged (1e-30 when None, their value and big_vision's;
the Adafactor recipes set it). The two are on different scales, so one value cannot serve both.

In all three, weight decay follows the AdamW convention: the update gets ``+ weight_decay * param``
before it is scaled by the (scheduled) learning rate.

Parameter groups are picked by regular expressions over '/'-joined parameter paths
(e.g. ``image/transformer/blocks/0/attn/query``), so configs can say "no decay on norms and
biases" or "freeze the image tower" (LiT, Zhai et al. 2022) without touching model code. Frozen
parameters get ``optax.set_to_zero``: no update and no optimizer state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("adamw", "lamb", "adafactor")
SCHEDULES = ("cosine", "linear")
# config.optimizer.eps = None: each optimizer's own default (AdamW/LAMB: added to sqrt(v);
# Adafactor: epsilon1, added to g^2 -- Shazeer & Stern 2018, Alg. 4)
DEFAULT_EPS = {"adamw": 1e-6, "lamb": 1e-6, "adafactor": 1e-30}


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


def freeze_patterns(config: Any) -> tuple[str, ...]:
  """The frozen parameters' path patterns: ``config.optimizer.freeze`` and the locked towers (LiT:
  a locked tower is frozen like any other pattern, no updates and no optimizer state)."""
  return tuple(config.optimizer.freeze) + tuple(f"^{tower}/" for tower in config.init.lock_towers)


def frozen_labels(params: Any, freeze: Sequence[str]) -> Any:
  frozen = _matches(freeze)
  return jax.tree.map(lambda p: "frozen" if frozen(p) else "trainable", param_paths(params))


def learning_rate_schedule(config: Any) -> optax.Schedule:
  """Linear warmup from 0 to ``lr``, then cosine (default) or linear decay to ``lr * end_lr_factor``
  at ``total_steps`` (``config.optimizer.schedule``)."""
  total = int(config.total_steps)
  oc = config.optimizer
  warmup = min(int(oc.warmup_steps), total)
  peak = float(oc.lr)
  end = peak * float(oc.end_lr_factor)
  kind = oc.get("schedule", "cosine")
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=warmup,
      decay_steps=max(total, warmup + 1),
      end_value=end,
    )
  if kind == "linear":
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, peak, max(warmup, 1)),
        optax.linear_schedule(peak, end, max(total - warmup, 1)),
      ],
      [warmup],
    )
  raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {SCHEDULES}")


class FactoredMomentsState(NamedTuple):
  """Adafactor statistics, each a tree shaped like the parameters: the row and column statistics
  of factored tensors (a placeholder of shape (1,) elsewhere) and the full second moment of the
  others (a placeholder where factored). Leaves not shaped like their parameter are replicated
  over the mesh by the trainer; they are small."""

  count: jax.Array
  v_row: Any
  v_col: Any
  v: Any


def _factored_axes(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
  """(row axis, column axis): the two largest axes, or None when the tensor is not factored."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape, kind="stable")
  col, row = int(order[-1]), int(order[-2])
  if shape[row] < min_dim_size_to_factor:
    return None
  return row, col


def scale_by_factored_moments(
  b2: float = 0.999, decay_rate: float = 0.8, min_dim_size_to_factor: int = 32, eps: float = 1e-30
) -> optax.GradientTransformation:
  """Divides gradients by the root of Adafactor's second-moment estimate.

  For a tensor whose two largest axes are at least ``min_dim_size_to_factor`` long, only the means
  of the squared gradient over each of those axes are kept (a row and a column statistic), and the
  second moment is their outer product over the row statistic's mean; smaller tensors keep a full
  second moment. The moving-average decay at step t (from 1) is ``min(b2, 1 - t^-decay_rate)``.
  ``eps`` (epsilon1 of Shazeer & Stern 2018, Alg. 4) is added to the squared gradient first, so
  all-zero rows and columns stay finite.
  """
  placeholder = lambda: jnp.zeros((1,), jnp.float32)  # noqa: E731

  def init(params):
    def stats(p):
      axes = _factored_axes(tuple(p.shape), min_dim_size_to_factor)
      if axes is None:
        return placeholder(), placeholder(), jnp.zeros(p.shape, jnp.float32)
      row, col = axes
      return (
        jnp.zeros(np.delete(p.shape, col), jnp.float32),
        jnp.zeros(np.delete(p.shape, row), jnp.float32),
        placeholder(),
      )

    return FactoredMomentsState(
      count=jnp.zeros([], jnp.int32),
      v_row=jax.tree.map(lambda p: stats(p)[0], params),
      v_col=jax.tree.map(lambda p: stats(p)[1], params),
      v=jax.tree.map(lambda p: stats(p)[2], params),
    )

  def update(updates, state, params=None):
    del params
    t = (state.count + 1).astype(jnp.float32)
    decay = jnp.minimum(b2, 1.0 - t ** (-decay_rate))

    def one(g, v_row, v_col, v):
      g32 = g.astype(jnp.float32)
      sq = g32 * g32 + eps
      axes = _factored_axes(tuple(g.shape), min_dim_size_to_factor)
      if axes is None:
        v = decay * v + (1 - decay) * sq
        return (g32 * jax.lax.rsqrt(v)).astype(g.dtype), v_row, v_col, v
      row, col = axes
      v_row = decay * v_row + (1 - decay) * sq.mean(axis=col)
      v_col = decay * v_col + (1 - decay) * sq.mean(axis=row)
      row_in_v_row = row if row < col else row - 1  # v_row lacks the column axis
      row_factor = jax.lax.rsqrt(v_row / v_row.mean(axis=row_in_v_row, keepdims=True))
      col_factor = jax.lax.rsqrt(v_col)
      scaled = g32 * jnp.expand_dims(row_factor, col) * jnp.expand_dims(col_factor, row)
      return scaled.astype(g.dtype), v_row, v_col, v

    out = jax.tree.map(one, updates, state.v_row, state.v_col, state.v)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)  # noqa: E731
    return pick(0), FactoredMomentsState(count=state.count + 1, v_row=pick(1), v_col=pick(2), v=pick(3))

  return optax.GradientTransformation(init, update)


def adafactor(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float | None = 0.9,
  b2: float = 0.999,
  eps: float = 1e-30,
  weight_decay: float = 0.0,
  mask: Any = None,
  min_dim_size_to_factor: int = 32,
) -> optax.GradientTransformation:
  """Factored second moments (``eps``: epsilon1, added to the squared gradient), momentum ``b1``
  on the scaled updates, decoupled weight decay."""
  parts = [scale_by_factored_moments(b2=b2, min_dim_size_to_factor=min_dim_size_to_factor, eps=eps)]
  if b1:
    parts.append(optax.ema(b1, debias=False))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def check_config(optimizer_section: Any) -> None:
  """``config.optimizer`` -> ValueError naming the first problem (unknown optimizer or schedule,
  an epsilon that is not a positive number or None)."""
  oc = optimizer_section
  if oc.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={oc.name!r} is not one of: {', '.join(OPTIMIZERS)}")
  schedule = oc.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={schedule!r} is not one of: {', '.join(SCHEDULES)}")
  eps = oc.get("eps")
  if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0):
    raise ValueError(
      f"config.optimizer.eps={eps!r} must be a positive number, or None for "
      f"{oc.name}'s own ({DEFAULT_EPS[oc.name]:g})"
    )


def optimizer_eps(optimizer_section: Any) -> float:
  """``config.optimizer.eps``, or the named optimizer's own default when it is None."""
  eps = optimizer_section.get("eps")
  return DEFAULT_EPS[optimizer_section.name] if eps is None else float(eps)


def build_optimizer(config: Any, params: Any) -> optax.GradientTransformation:
  """The full transformation for ``params`` (an abstract or concrete tree) from ``config``."""
  oc = config.optimizer
  if oc.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {oc.name!r}; vlpt supports {', '.join(OPTIMIZERS)}")
  eps = optimizer_eps(oc)
  schedule = learning_rate_schedule(config)
  mask = decay_mask(params, tuple(oc.no_decay))
  parts = []
  if oc.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(oc.grad_clip_norm)))
  if oc.name == "adamw":
    parts.append(
      optax.adamw(schedule, b1=oc.b1, b2=oc.b2, eps=eps, weight_decay=oc.weight_decay, mask=mask)
    )
  elif oc.name == "lamb":
    parts.append(
      optax.lamb(schedule, b1=oc.b1, b2=oc.b2, eps=eps, weight_decay=oc.weight_decay, mask=mask)
    )
  else:
    parts.append(
      adafactor(schedule, b1=oc.b1, b2=oc.b2, eps=eps, weight_decay=oc.weight_decay, mask=mask)
    )
  tx = optax.chain(*parts)
  freeze = freeze_patterns(config)
  if freeze:
    tx = optax.multi_transform(
      {"trainable": tx, "frozen": optax.set_to_zero()}, frozen_labels(params, freeze)
    )
  return tx
