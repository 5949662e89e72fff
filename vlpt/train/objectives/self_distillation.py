"""SigLIP 2's last stage (Tschannen et al. 2025, arXiv:2502.14786, Sec. 2.3): two image-only terms
against the EMA teacher, added to any objective's loss from step round(start_fraction * total_steps).

* ``self_distillation_loss`` (SILC's local-to-global consistency, Naeem et al. 2023,
  arXiv:2310.13355, Sec. 3): each local crop's pooled embedding (student, global head) predicts the
  teacher's prototype assignment of the full image (global view, pooled, global head).
* ``masked_prediction_loss`` (TIPS, Maninis et al. 2024, arXiv:2410.16512; iBOT's masked image
  modeling): the student sees the global view with ``mask_ratio`` of its patches replaced by the
  mask token; at the masked positions its patch tokens (patch head) predict the teacher's
  assignment of the unmasked view's patch tokens.

The teacher is ``state.ema`` (``config.ema.decay`` > 0), held by ``stop_gradient``; its targets are
Sinkhorn-Knopp balanced (:mod:`vlpt.losses.self_distillation`), so nothing else is kept in the
state. Before the start a ``lax.cond`` takes the branch that returns zeros: the terms cost nothing
and the loss and gradient are the underlying objective's exactly. The step hands the objective the
train state's EMA, step and key through :meth:`step_inputs`.

The paper's: the two terms, the EMA teacher, the start at 80% of training, the global / local
views (SILC) and masked prediction on the patch tokens (TIPS). vlpt's choices: Sinkhorn targets
instead of a running center, one global view for the teacher (the training image; SILC uses two
global crops), the per-example random (not block) masking, and the default sizes in
``config.self_distillation``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlpt.losses.self_distillation import sinkhorn_targets, soft_cross_entropy
from vlpt.models.sizes import parse_vit

TERMS = ("self_distillation_loss", "masked_prediction_loss")


def enabled(config: Any) -> bool:
  sd = config.get("self_distillation")
  return sd is not None and (float(sd.weight) > 0 or float(sd.masked_weight) > 0)


def start_step(config: Any) -> int:
  """The first step (0-based ``state.step``) whose update includes the terms."""
  return round(float(config.self_distillation.start_fraction) * int(config.total_steps))


def check_config(config: Any) -> None:
  """``config.self_distillation`` against the rest of the config -> ValueError naming the fix."""
  sd = config.get("self_distillation")
  if sd is None:
    return
  if float(sd.weight) < 0 or float(sd.masked_weight) < 0:
    raise ValueError(
      f"config.self_distillation weights must be >= 0, got weight={sd.weight}, "
      f"masked_weight={sd.masked_weight}"
    )
  if not enabled(config):
    return
  if float(config.ema.decay) <= 0:
    raise ValueError(
      "config.self_distillation needs the EMA teacher: set config.ema.decay > 0 (e.g. 0.999); "
      "to evaluate such a run's raw parameters (vlpt-eval --config.ema.decay=0), also turn the "
      "terms off: --config.self_distillation.weight=0 --config.self_distillation.masked_weight=0"
    )
  if not config.model.image.get("ssl_head"):
    raise ValueError(
      "config.self_distillation needs the heads: set config.model.image.ssl_head "
      "(e.g. {'prototypes': 65536})"
    )
  if not 0.0 <= float(sd.start_fraction) < 1.0:
    raise ValueError(
      f"config.self_distillation.start_fraction must be in [0, 1), got {sd.start_fraction}"
    )
  if not 0.0 < float(sd.mask_ratio) < 1.0:
    raise ValueError(f"config.self_distillation.mask_ratio must be in (0, 1), got {sd.mask_ratio}")
  if float(sd.teacher_temp) <= 0 or float(sd.student_temp) <= 0:
    raise ValueError("config.self_distillation.teacher_temp and student_temp must be > 0")
  if int(config.accumulation_steps) > 1:
    raise ValueError("config.self_distillation with config.accumulation_steps > 1 is not supported")
  if config.data.train.get("naflex", {}).get("lengths"):
    raise ValueError("config.self_distillation with NaFlex training is not supported")
  if float(sd.weight) > 0:
    _, patch = parse_vit(config.model.image.variant)
    lo, hi = (float(x) for x in sd.local_scale)
    if int(sd.local_crops) < 1 or int(sd.local_size) % patch or int(sd.local_size) < patch:
      raise ValueError(
        f"config.self_distillation needs local_crops >= 1 and local_size a multiple of the patch "
        f"({patch}), got {sd.local_crops} and {sd.local_size}"
      )
    if not 0 < lo <= hi <= 1:
      raise ValueError(
        f"config.self_distillation.local_scale must be 0 < lo <= hi <= 1, got {sd.local_scale}"
      )


class SelfDistillation:
  """Mixin over an objective (first in the bases): its loss plus the weighted stage terms."""

  @classmethod
  def check_config(cls, config: Any) -> None:
    super().check_config(config)
    check_config(config)

  def __init__(self, setup: Any):
    super().__init__(setup)
    sd = self.config.self_distillation
    self.extra_terms = (*self.extra_terms, *TERMS)
    self.start = start_step(self.config)
    self.sd_weight, self.masked_weight = float(sd.weight), float(sd.masked_weight)
    self.mask_ratio = float(sd.mask_ratio)
    self.teacher_temp, self.student_temp = float(sd.teacher_temp), float(sd.student_temp)
    self.iterations = int(sd.sinkhorn_iterations)

  def step_inputs(self, state: Any, aux: Any) -> dict[str, Any]:
    """The objective's own extra inputs plus the train state's EMA (the teacher), step and key."""
    return {"aux": aux, "ema": state.ema, "step": state.step, "rng": state.rng}

  def loss(self, params, batch, aux=None):
    """Called outside the step (no train state in ``aux``) the terms are reported as 0."""
    if not (isinstance(aux, dict) and "ema" in aux):
      total, metrics = super().loss(params, batch, aux)
      return total, {**metrics, **self._zeros()}
    total, metrics = super().loss(params, batch, aux["aux"])
    terms = jax.lax.cond(
      aux["step"] >= self.start,
      self.stage_terms,
      lambda *_: self._zeros(),
      params,
      aux["ema"],
      batch,
      aux["rng"],
      aux["step"],
    )
    total = total + self.sd_weight * terms[TERMS[0]] + self.masked_weight * terms[TERMS[1]]
    return total, {**metrics, **terms}

  @staticmethod
  def _zeros() -> dict[str, jax.Array]:
    return {t: jnp.zeros((), jnp.float32) for t in TERMS}

  def patch_mask(self, key: jax.Array, batch: int, n: int) -> jax.Array:
    """[batch, n] bool: exactly round(mask_ratio * n) (at least 1) random patches per example."""
    k = max(1, min(n, round(self.mask_ratio * n)))
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, n)), axis=-1), axis=-1)
    return rank < k

  def stage_terms(self, params, ema, batch, rng, step) -> dict[str, jax.Array]:
    """Both terms (0 for one whose weight is 0), the teacher on the global view."""
    teacher = nnx.merge(self.graphdef, jax.lax.stop_gradient(ema)).image
    student = self.model(params).image
    images = self.normalized(batch["image"])
    t_pooled, t_tokens = teacher.features(images)
    t_pooled, t_tokens = jax.lax.stop_gradient((t_pooled, t_tokens))
    terms = self._zeros()
    if self.sd_weight > 0:
      targets = sinkhorn_targets(teacher.ssl_global(t_pooled), self.teacher_temp, self.iterations)
      local = batch["local_images"]  # [B, V, s, s, 3]
      b, v = local.shape[:2]
      pooled, _ = student.features(self.normalized(local.reshape(b * v, *local.shape[2:])))
      logits = student.ssl_global(pooled).reshape(b, v, -1)
      terms[TERMS[0]] = soft_cross_entropy(targets[:, None], logits, self.student_temp)
    if self.masked_weight > 0:
      b, n = t_tokens.shape[:2]
      t_logits = teacher.ssl_patch(t_tokens)
      targets = sinkhorn_targets(t_logits.reshape(b * n, -1), self.teacher_temp, self.iterations)
      key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng), step), 0x5D)
      mask = self.patch_mask(key, b, n)
      _, tokens = student.features(images, patch_mask=mask)
      logits = student.ssl_patch(tokens)
      terms[TERMS[1]] = soft_cross_entropy(
        targets.reshape(b, n, -1), logits, self.student_temp, where=mask
      )
    return terms


@functools.cache
def with_self_distillation(cls: type) -> type:
  """``cls`` with the stage's terms (one class per objective, so its identity is stable)."""
  return type(f"{cls.__name__}WithSelfDistillation", (SelfDistillation, cls), {})
