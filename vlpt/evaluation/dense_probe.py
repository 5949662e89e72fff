"""The ``dense_probe`` task: how much a frozen image tower's patch tokens know about *where* things are.

Contrastive image-text training only supervises the pooled embedding; SigLIP 2 (Tschannen et al.
2025, arXiv 2502.14786, Sec. 2) adds LocCa decoding, self-distillation and masked prediction
precisely to improve the dense (per-patch) features, and measures them with dense probes. This
task does the same on any source with per-pixel class masks (the built-in dataset):

* **labels**: each patch gets the class covering most of its pixels in the source's mask
  (:func:`patch_labels`; the background is a class of its own, ties go to the lower id);
* **probe**: a linear classifier on the tower's patch tokens before pooling
  (``model.image.patch_tokens``): linear discriminant analysis (Gaussian classes with a shared,
  ridge-regularized covariance on standardized features; :func:`fit_lda`). It is fitted in
  closed form from sufficient statistics (patch count, feature sum, Gram matrix, per-class sums)
  accumulated on the devices batch by batch, so memory is width^2 whatever the number of
  patches, and every patch of the fitting split counts. (Least squares onto one-hot targets, the
  few-shot probe of ViT, Dosovitskiy et al. 2021, Sec. 4.1, needs the same statistics but
  predicts nothing but the background when 85% of the patches are background, as on the built-in
  data.) The ridge strength is the one that classifies the most patches of a held-out fifth of
  the fitting split (examples ``i % 5 == 4``) right when fitted on the rest; the probe is then
  refitted on the whole fitting split;
* **score**: on the evaluated split, ``accuracy`` (all patches), ``foreground_accuracy``
  (patches whose label is an object), ``miou`` (mean intersection over union over the classes
  present in labels or predictions), ``majority_accuracy`` (always predicting the fitting
  split's most common patch class: the level a probe that learned nothing reaches) and the chosen
  ``ridge``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpt.data.loader import to_global
from vlpt.data.normalization import normalize_images
from vlpt.evaluation.datasets import EvalReader, read_images
from vlpt.sharding import batch_sharding, replicated

RIDGES = tuple(10.0**k for k in range(-4, 3))  # on standardized features (unit variance)
HELD_OUT_EVERY = 5  # fitting examples i % 5 == 4 choose the ridge strength


def patch_labels(masks: Any, patch: int, num_classes: int) -> jax.Array:
  """Per-pixel class masks [B, H, W] -> each patch's majority class [B, (H/p)*(W/p)] (int32).

  Patches are in the image tower's order (row-major, as ``patchify``); a tie between classes goes
  to the lower class id (``argmax`` takes the first maximum).
  """
  masks = jnp.asarray(masks)
  b, h, w = masks.shape
  if h % patch or w % patch:
    raise ValueError(f"{h}x{w} masks are not a whole number of {patch}x{patch} patches")
  gh, gw = h // patch, w // patch
  blocks = masks.reshape(b, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4)
  counts = jax.nn.one_hot(blocks.reshape(b, gh * gw, patch * patch), num_classes, dtype=jnp.int32)
  return jnp.argmax(counts.sum(axis=2), axis=-1).astype(jnp.int32)


def statistics(features: jax.Array, labels: jax.Array, weights: jax.Array, k: int) -> dict:
  """Weighted sufficient statistics of a linear discriminant: the patch count ``n``, feature sum
  ``sx`` [D], class counts ``sy`` [K], Gram matrix ``sxx`` [D, D], per-class feature sums ``sxy``
  [D, K]. Sums over batches add up."""
  hi = jax.lax.Precision.HIGHEST  # TPUs would otherwise multiply in bf16
  x = features.astype(jnp.float32)
  y = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  xw = x * weights[:, None]
  return {
    "n": weights.sum(),
    "sx": xw.sum(0),
    "sy": (y * weights[:, None]).sum(0),
    "sxx": jnp.einsum("nd,ne->de", xw, x, precision=hi),
    "sxy": jnp.einsum("nd,nk->dk", xw, y, precision=hi),
  }


def fit_lda(stats: dict, ridges: tuple[float, ...] = RIDGES) -> tuple[np.ndarray, np.ndarray]:
  """Linear discriminant analysis from :func:`statistics`, one classifier per ridge strength.

  Gaussian classes with a shared covariance (Hastie et al., Elements of Statistical Learning,
  Sec. 4.3): features standardized, the pooled within-class covariance plus ``ridge`` times the
  identity, class priors from the counts (classes never seen are never predicted). Returns
  (W [R, D, K], b [R, K]): class scores ``x @ W[r] + b[r]`` for raw features ``x``.
  """
  st = {key: np.asarray(v, np.float64) for key, v in stats.items()}
  n, counts = st["n"], st["sy"]
  seen = counts > 0
  mu = st["sx"] / n
  means = np.where(seen, st["sxy"] / np.maximum(counts, 1.0), mu[:, None])  # [D, K]
  total = st["sxx"] / n - np.outer(mu, mu)
  scale = np.sqrt(np.maximum(np.diag(total), 0.0))
  scale = np.where(scale > 1e-6 * max(scale.max(), 1e-30), scale, 1.0)  # constant features
  within = (st["sxx"] - (means * counts) @ means.T) / n
  evals, evecs = np.linalg.eigh(within / np.outer(scale, scale))
  centred = (means - mu[:, None]) / scale[:, None]  # standardized class means [D, K]
  rotated = evecs.T @ centred
  log_prior = np.where(seen, np.log(np.maximum(counts, 1.0) / n), -1e30)
  ws, bs = [], []
  for ridge in ridges:
    p = evecs @ (rotated / (np.maximum(evals, 0.0) + ridge)[:, None])  # [D, K]
    w = p / scale[:, None]
    ws.append(w)
    bs.append(-(mu @ w) - 0.5 * np.sum(centred * p, axis=0) + log_prior)
  return np.stack(ws), np.stack(bs)


def confusion_metrics(
  confusion: np.ndarray, background: int, fit_counts: np.ndarray
) -> dict[str, float]:
  """``confusion[true, predicted]`` patch counts of the scored split (and the fitting split's patch
  counts per class, for the majority baseline) -> the task's metrics (see the module doc)."""
  c = np.asarray(confusion, np.float64)
  majority = int(np.argmax(fit_counts))
  total = c.sum()
  fg = np.arange(len(c)) != background
  tp = np.diag(c)
  union = c.sum(0) + c.sum(1) - tp
  present = union > 0
  return {
    "accuracy": float(tp.sum() / total),
    "foreground_accuracy": float(tp[fg].sum() / c[fg].sum()) if c[fg].sum() else float("nan"),
    "miou": float(np.mean(tp[present] / union[present])),
    "majority_accuracy": float(c[majority].sum() / total),
  }


class DenseProbe:
  """Fits on ``num_fit`` examples of ``fit_reader``, scores the first ``num_examples`` of ``reader``."""

  def __init__(
    self,
    ctx: Any,
    reader: EvalReader,
    num_examples: int,
    fit_reader: EvalReader,
    num_fit: int,
  ):
    for r in (reader, fit_reader):
      if not r.has_masks:
        raise ValueError(f"{r.name} has no per-pixel class masks for dense_probe")
    if num_fit < HELD_OUT_EVERY:
      raise ValueError(f"dense_probe needs at least {HELD_OUT_EVERY} fitting examples, got {num_fit}")
    self.ctx, self.reader, self.fit_reader = ctx, reader, fit_reader
    self.num_examples, self.num_fit = num_examples, num_fit
    self.num_classes, self.background = reader.mask_classes, reader.mask_background
    k, hi = self.num_classes, jax.lax.Precision.HIGHEST

    def tokens_and_labels(params, images, masks, rows):
      """Flat patch tokens [B*N, D], labels [B*N] and each patch's row weight (rows >= 0)."""
      model = nnx.merge(ctx.graphdef, params)
      tokens = model.image.patch_tokens(normalize_images(images, ctx.normalization))
      labels = patch_labels(masks, model.image.patch, k)
      per_image = labels.shape[1]
      x = tokens.reshape(-1, tokens.shape[-1]).astype(jnp.float32)
      return x, labels.reshape(-1), jnp.repeat(rows, per_image)

    def accumulate(params, images, masks, group, totals):
      x, y, group = tokens_and_labels(params, images, masks, group)
      return [  # 0: fitting, 1: held out (chooses the ridge); -1: padding
        jax.tree.map(jnp.add, totals[g], statistics(x, y, (group == g).astype(jnp.float32), k))
        for g in (0, 1)
      ]

    def held_out_correct(params, images, masks, valid, w, b, correct):
      x, y, valid = tokens_and_labels(params, images, masks, valid)
      pred = jnp.argmax(jnp.einsum("nd,rdk->nrk", x, w, precision=hi) + b, axis=-1)  # [N, R]
      return correct + jnp.sum((pred == y[:, None]) & (valid[:, None] > 0), axis=0, dtype=jnp.int32)

    def score(params, images, masks, valid, w, b, confusion):
      x, y, valid = tokens_and_labels(params, images, masks, valid)
      pred = jnp.argmax(jnp.dot(x, w, precision=hi) + b, axis=-1)
      return confusion.at[y, pred].add((valid > 0).astype(jnp.int32))  # padding rows are -1

    rep, batch = replicated(ctx.mesh), lambda n: batch_sharding(ctx.mesh, n)  # noqa: E731
    data = (ctx.param_shardings, batch(4), batch(3), batch(1))
    self._accumulate = jax.jit(
      accumulate, in_shardings=(*data, rep), out_shardings=rep, donate_argnums=4
    )
    self._held_out = jax.jit(
      held_out_correct, in_shardings=(*data, rep, rep, rep), out_shardings=rep, donate_argnums=6
    )
    self._score = jax.jit(
      score, in_shardings=(*data, rep, rep, rep), out_shardings=rep, donate_argnums=6
    )

  def _batches(self, reader: EvalReader, indices: np.ndarray, group_of):
    """Global (images, masks, per-row group) batches of ``reader[indices]``, read in shares.

    The last batch is padded by repeating the last example, with group -1."""
    gb, pc, pi = self.ctx.batch_size, jax.process_count(), jax.process_index()
    local, n = gb // pc, len(indices)
    for start in range(0, n, gb):
      rows = np.arange(start + pi * local, start + (pi + 1) * local)
      read = indices[np.minimum(rows, n - 1)]
      batch = {
        "image": read_images(reader, read),
        "mask": np.stack([reader.mask(int(i)) for i in read]).astype(np.int32),
        "group": np.where(rows < n, group_of(read), -1).astype(np.int32),
      }
      arrays = to_global(batch, self.ctx.mesh, pc)
      yield arrays["image"], arrays["mask"], arrays["group"]

  def _zeros(self, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.zeros(shape, dtype, device=replicated(self.ctx.mesh))

  def __call__(self, params: Any) -> dict[str, float]:
    width = jax.eval_shape(
      lambda p: nnx.merge(self.ctx.graphdef, p).image.patch_tokens(
        jnp.zeros((1, self.ctx.image_size, self.ctx.image_size, 3), jnp.float32)
      ),
      params,
    ).shape[-1]
    k, rep = self.num_classes, replicated(self.ctx.mesh)
    shapes = {"n": (), "sx": (width,), "sy": (k,), "sxx": (width, width), "sxy": (width, k)}
    # two distinct sets of buffers (fitting, held out): the accumulation donates them
    totals = [{key: self._zeros(shape) for key, shape in shapes.items()} for _ in "fh"]
    fit_rows = np.arange(self.num_fit)
    held = lambda rows: (rows % HELD_OUT_EVERY == HELD_OUT_EVERY - 1).astype(np.int32)  # noqa: E731
    for images, masks, group in self._batches(self.fit_reader, fit_rows, held):
      totals = self._accumulate(params, images, masks, group, totals)
    fit, held_out = jax.device_get(totals)
    # the ridge strength: the most held-out patches right when fitted without them
    w, b = jax.device_put(tuple(jnp.asarray(a, jnp.float32) for a in fit_lda(fit)), rep)
    correct = self._zeros((len(RIDGES),), jnp.int32)
    ones = lambda rows: np.ones(len(rows), np.int32)  # noqa: E731
    for images, masks, group in self._batches(self.fit_reader, fit_rows[held(fit_rows) == 1], ones):
      correct = self._held_out(params, images, masks, group, w, b, correct)
    correct = np.asarray(jax.device_get(correct))
    best = max(range(len(RIDGES)), key=lambda r: (correct[r], r))  # a tie: the stronger ridge
    both = {key: np.asarray(fit[key], np.float64) + np.asarray(held_out[key]) for key in fit}
    w, b = (a[0] for a in fit_lda(both, (RIDGES[best],)))
    w, b = jax.device_put((jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)), rep)
    confusion = self._zeros((k, k), jnp.int32)
    for images, masks, group in self._batches(self.reader, np.arange(self.num_examples), ones):
      confusion = self._score(params, images, masks, group, w, b, confusion)
    out = confusion_metrics(np.asarray(jax.device_get(confusion)), self.background, both["sy"])
    out["ridge"] = RIDGES[best]
    return out
