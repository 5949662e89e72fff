"""Linear probe on frozen image features, with CLIP_benchmark's definition, in JAX.

CLIP_benchmark (``clip_benchmark/metrics/linear_probe.py``; Radford et al. 2021, App. A.3, with
AdamW instead of L-BFGS logistic regression) does the following, and so does :func:`linear_probe`:

1. Features are L2-normalized (its ``--normalize`` default).
2. A validation split is carved out of the training features (``--val_proportion``: a random
   ``floor(n * p)`` examples, like ``torch.utils.data.random_split``) unless one is given.
   CLIP_benchmark's command line has no default proportion; vlpt's is 0.2.
3. One linear layer (``torch.nn.Linear`` init: weight and bias uniform in ``±1/sqrt(dim)``) is
   trained with AdamW (betas 0.9/0.999, eps 1e-8, the decay applied to weight and bias) on the mean
   cross-entropy of shuffled minibatches of 64 (the last one smaller), for 10 epochs, at learning
   rate 0.1 on a cosine schedule without warmup (``0.5 (1 + cos(pi t / T)) lr`` at step ``t`` of
   ``T = epochs * ceil(n / 64)``). Every training run restarts from the same seed.
4. The weight decay is searched on ``np.logspace(-6, 2, 97)``: first the 7 values
   ``logspace(-6, 2, 7)`` (every 16th), then around the best index at spans 8, 4, 2, 1 the triple
   ``[best - span, best, best + span]`` (clipped to the grid), keeping the best top-1 validation
   accuracy; a candidate replaces the best only if strictly better, so ties go to the earlier
   candidate (the left neighbour in the refinement).
5. The final model is trained with the chosen decay on train + validation and scored on the test
   features: top-1, top-5 (NaN when the largest test label is below 5, as CLIP_benchmark does) and
   mean per-class recall (sklearn's balanced accuracy).

Without a validation split (``val_proportion=None`` and no ``val_features``) there is no search
and the decay is 0, as in CLIP_benchmark without ``--val_split`` / ``--val_proportion``.

The numbers are not bit-comparable with CLIP_benchmark's: the shuffles and the initialization come
from numpy's random numbers rather than torch's, training is float32 (CLIP_benchmark autocasts to
float16 on GPU), and the split differs in which examples it picks. With torch's random draws
substituted, vlpt picks the same weight decay and the same accuracies as CLIP_benchmark's own
``evaluate`` on the same features; with its own draws, over 10 datasets, accuracies are within 2.7
points and the decay within 14 grid steps, as far apart as CLIP_benchmark reseeded is from itself
(tests/evaluation/test_linear_probe_reference.py). Within vlpt, results are deterministic given
``seed``.

All candidates of one search round train at once (``vmap`` over the decays, padded to 7 so that
every round reuses one compilation; they share the initialization and the data order, exactly as
CLIP_benchmark's reseeded runs do), in one jitted ``lax.scan`` over the steps. The initialization
and shuffles are drawn on the host, so the compiled program holds no random-number generator
(compiling it takes well under a second on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlpt.evaluation import metrics as M

WEIGHT_DECAYS = tuple(np.logspace(-6, 2, num=97).tolist())
_INITIAL = tuple(range(0, 97, 16))  # logspace(-6, 2, 7) within the grid


def _normalize(x: np.ndarray) -> np.ndarray:
  norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
  return x / np.maximum(norm, 1e-12)


def _run_randomness(
  seed: int, n: int, dim: int, num_classes: int, epochs: int, batch_size: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """What one seeded training run draws: ``torch.nn.Linear``-style init and per-epoch shuffles.

  Drawn on the host (numpy) so the compiled program holds no random-number generator; every run
  with the same seed gets the same draws (CLIP_benchmark reseeds torch before each run).
  """
  rng = np.random.default_rng(seed)
  bound = 1.0 / math.sqrt(dim)
  params = {
    "w": rng.uniform(-bound, bound, (dim, num_classes)).astype(np.float32),
    "b": rng.uniform(-bound, bound, (num_classes,)).astype(np.float32),
  }
  steps = -(-n // batch_size)
  order = np.zeros((epochs, steps * batch_size), np.int32)
  for e in range(epochs):
    order[e, :n] = rng.permutation(n)
  valid = np.broadcast_to(np.arange(steps * batch_size) < n, order.shape)
  return (
    params,
    order.reshape(epochs, steps, batch_size),
    np.ascontiguousarray(valid).reshape(epochs, steps, batch_size),
  )


def _logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return jnp.dot(x, params["w"], precision="highest") + params["b"]


@jax.jit
def _train(
  features: jax.Array,
  labels: jax.Array,
  weight_decays: jax.Array,
  params0: dict[str, jax.Array],
  order: jax.Array,
  valid: jax.Array,
  lr: jax.Array,
) -> dict[str, jax.Array]:
  """Linear layers trained on (features, labels), one per weight decay: params with a [K] axis.

  ``order``/``valid``: [epochs, steps, batch] example indices and which of them are real (the last
  batch of an epoch is padded).
  """
  total = order.shape[0] * order.shape[1]

  def loss_fn(params, x, y, mask):
    logp = jax.nn.log_softmax(_logits(params, x))
    nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.sum(mask)

  grad_fn = jax.grad(loss_fn)
  b1, b2, eps = 0.9, 0.999, 1e-8

  def train_one(wd):
    def step(state, batch):
      params, mu, nu, t = state
      idx, mask = batch
      g = grad_fn(params, features[idx], labels[idx], mask)
      step_lr = 0.5 * (1.0 + jnp.cos(jnp.pi * t / total)) * lr
      t1 = t + 1.0
      mu = jax.tree.map(lambda m, gi: b1 * m + (1 - b1) * gi, mu, g)
      nu = jax.tree.map(lambda v, gi: b2 * v + (1 - b2) * gi * gi, nu, g)
      c1, c2 = 1 - b1**t1, 1 - b2**t1

      def update(p, m, v):
        p = p * (1.0 - step_lr * wd)  # decoupled decay (torch AdamW: before the Adam step)
        return p - step_lr * (m / c1) / (jnp.sqrt(v / c2) + eps)

      params = jax.tree.map(update, params, mu, nu)
      return (params, mu, nu, t1), None

    def epoch(state, batches):
      state, _ = jax.lax.scan(step, state, batches)
      return state, None

    zeros = jax.tree.map(jnp.zeros_like, params0)
    state = (params0, zeros, zeros, jnp.float32(0.0))
    (params, _, _, _), _ = jax.lax.scan(epoch, state, (order, valid))
    return params

  return jax.vmap(train_one)(weight_decays)


@jax.jit
def _top1_counts(params: dict[str, jax.Array], features: jax.Array, labels: jax.Array) -> jax.Array:
  logits = jax.vmap(_logits, in_axes=(0, None))(params, features)  # [K, N, C]
  return jnp.sum(jnp.argmax(logits, axis=-1) == labels[None], axis=-1)


def _split(n: int, proportion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``random_split(range(n), [1 - p, p])``-style: floor of each share, remainder to train."""
  if not 0.0 < proportion < 1.0:
    raise ValueError(f"val_proportion must be in (0, 1), got {proportion}")
  n_train, n_val = int(math.floor(n * (1 - proportion))), int(math.floor(n * proportion))
  n_train += n - n_train - n_val
  if n_val == 0 or n_train == 0:
    raise ValueError(f"val_proportion={proportion} leaves an empty split of {n} examples")
  perm = np.random.default_rng(seed).permutation(n)
  return perm[:n_train], perm[n_train:]


def search_weight_decay(
  grid_size: int,
  val_accuracy: Callable[[Sequence[int]], Sequence[float]],
  start: Sequence[int] = _INITIAL,
) -> int:
  """CLIP_benchmark's weight-decay search over grid indices (module docstring, step 4).

  ``val_accuracy(indices)`` trains one model per index and returns their validation accuracies; it
  is called once per round with the indices not evaluated yet (results are deterministic, so the
  centre of a refinement triple is not retrained) and may return more values than asked (padding),
  which are ignored. Returns the chosen index.
  """
  accuracy: dict[int, float] = {}

  def find_peak(indices: Sequence[int]) -> int:
    todo = sorted(set(i for i in indices if i not in accuracy))
    if todo:
      got = val_accuracy(todo)
      accuracy.update(zip(todo, (float(a) for a in got[: len(todo)])))
    best, best_acc = 0, 0.0
    for i in indices:  # strictly better only: ties keep the earlier candidate
      if best_acc < accuracy[i]:
        best, best_acc = i, accuracy[i]
    return best

  peak = find_peak(list(start))
  span = 8
  while span > 0:
    peak = find_peak([max(peak - span, 0), peak, min(peak + span, grid_size - 1)])
    span //= 2
  return peak


def linear_probe(
  train_features: Any,
  train_labels: Any,
  test_features: Any,
  test_labels: Any,
  *,
  num_classes: int,
  seed: int = 0,
  lr: float = 0.1,
  epochs: int = 10,
  batch_size: int = 64,
  val_proportion: float | None = 0.2,
  val_features: Any = None,
  val_labels: Any = None,
  normalize: bool = True,
  weight_decays: Sequence[float] = WEIGHT_DECAYS,
  search_start: Sequence[int] = _INITIAL,
) -> dict[str, float]:
  """CLIP_benchmark's linear probe (module docstring) on [N, D] features and [N] int labels.

  Returns ``{"top1", "top5", "mean_per_class_recall", "weight_decay"}`` on the test features
  (fractions in [0, 1]). ``val_features``/``val_labels`` give the validation split explicitly;
  otherwise ``val_proportion`` of the training features is held out for the weight-decay search
  (``None``: no search, decay 0). ``weight_decays``/``search_start``: the grid and the indices
  the search starts from.
  """
  x_train = np.asarray(train_features, np.float32)
  y_train = np.asarray(train_labels, np.int32).reshape(-1)
  x_test = np.asarray(test_features, np.float32)
  y_test = np.asarray(test_labels, np.int32).reshape(-1)
  if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
    raise ValueError(f"features must be [N, D] with the same D, got {x_train.shape} and {x_test.shape}")
  if len(x_train) != len(y_train) or len(x_test) != len(y_test) or not len(x_train) or not len(x_test):
    raise ValueError("features and labels must have the same, non-zero, number of rows")
  if (val_features is None) != (val_labels is None):
    raise ValueError("give both val_features and val_labels, or neither")
  for y in [y_train, y_test] + ([np.asarray(val_labels)] if val_labels is not None else []):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got [{y.min()}, {y.max()}]")
  if normalize:
    x_train, x_test = _normalize(x_train), _normalize(x_test)

  def train(x: np.ndarray, y: np.ndarray, decays: Sequence[float]) -> dict[str, jax.Array]:
    params0, order, valid = _run_randomness(
      seed, len(x), x.shape[1], int(num_classes), int(epochs), int(batch_size)
    )
    return _train(
      jnp.asarray(x),
      jnp.asarray(y),
      jnp.asarray(decays, jnp.float32),
      params0,
      order,
      valid,
      jnp.float32(lr),
    )

  if val_features is not None:
    x_val = np.asarray(val_features, np.float32)
    y_val = np.asarray(val_labels, np.int32).reshape(-1)
    if normalize:
      x_val = _normalize(x_val)
    x_fit, y_fit = x_train, y_train
  elif val_proportion is not None:
    fit_idx, val_idx = _split(len(x_train), val_proportion, seed)
    x_fit, y_fit, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]
  else:
    x_val = None

  if x_val is None:
    best_wd = 0.0
    x_final, y_final = x_train, y_train
  else:
    grid = list(weight_decays)

    width = len(search_start)  # every round trains this many (padded): one compilation

    def val_accuracy(indices: Sequence[int]) -> list[float]:
      decays = [grid[i] for i in indices]
      decays += [decays[0]] * max(0, width - len(decays))
      params = train(x_fit, y_fit, decays)
      counts = np.asarray(_top1_counts(params, jnp.asarray(x_val), jnp.asarray(y_val)))
      return [c / len(y_val) for c in counts]

    peak = search_weight_decay(len(grid), val_accuracy, start=search_start)
    best_wd = float(grid[peak])
    x_final = np.concatenate([x_fit, x_val])
    y_final = np.concatenate([y_fit, y_val])

  params = train(x_final, y_final, [best_wd])
  params = jax.tree.map(lambda p: p[0], params)
  logits = np.asarray(_logits(params, jnp.asarray(x_test)))
  results = M.zeroshot_metrics(logits, y_test)
  if y_test.max() < 5:  # CLIP_benchmark's condition for reporting top-5
    results["top5"] = float("nan")
  return {
    "top1": results["top1"],
    "top5": results["top5"],
    "mean_per_class_recall": results["mean_per_class_recall"],
    "weight_decay": best_wd,
  }
