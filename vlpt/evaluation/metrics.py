"""Zero-shot classification and retrieval metrics with CLIP_benchmark's definitions.

* Zero-shot classifier: per class, embed every prompt template, L2-normalize each, average,
  re-normalize (Radford et al. 2021, Sec. 3.1.4 prompt ensembling).
* Classification: top-1, top-5 (NaN with fewer than 5 classes) and mean per-class recall, i.e.
  balanced accuracy over the classes present in the labels (sklearn's ``balanced_accuracy_score``,
  which CLIP_benchmark calls).
* Retrieval with several captions per image: scores = captions @ images^T. text->image R@k is the
  fraction of captions whose image is among their k best images; image->text R@k the fraction of
  images with *any* of their captions among their k best captions.

Top-k ties are broken towards the lower index (``jax.lax.top_k``'s order).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def normalize(x, axis: int = -1, eps: float = 1e-12):
  """L2-normalizes along ``axis`` (numpy in, numpy out; jax in, jax out)."""
  xp = jnp if isinstance(x, jax.Array) else np
  norm = xp.sqrt(xp.sum(x * x, axis=axis, keepdims=True))
  return x / xp.maximum(norm, eps)


def zeroshot_classifier(template_embeddings) -> jax.Array:
  """[C, T, D] raw prompt embeddings -> [C, D] normalized class embeddings."""
  emb = normalize(jnp.asarray(template_embeddings, jnp.float32))
  return normalize(emb.mean(axis=1))


def _topk_indices(scores: jax.Array, k: int, block: int) -> jax.Array:
  """Row-wise top-k indices, computed ``block`` rows at a time to bound memory."""
  out = []
  for start in range(0, scores.shape[0], block):
    out.append(jax.lax.top_k(scores[start : start + block], k)[1])
  return jnp.concatenate(out)


def zeroshot_metrics(logits, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """{'top1', 'top5', 'mean_per_class_recall'} from [N, C] logits and [N] integer labels."""
  logits = jnp.asarray(logits, jnp.float32)
  labels = np.asarray(labels, np.int64)
  num_classes = logits.shape[1]
  results: dict[str, float] = {}
  usable = [k for k in ks if k <= num_classes]
  if usable:
    top = np.asarray(_topk_indices(logits, max(usable), 4096))
    hits = top == labels[:, None]
  for k in ks:
    results[f"top{k}"] = float(hits[:, :k].any(axis=1).mean()) if k <= num_classes else float("nan")
  pred = np.asarray(jnp.argmax(logits, axis=1))
  recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
  results["mean_per_class_recall"] = float(np.mean(recalls))
  return results


def retrieval_metrics(
  image_emb, text_emb, text_to_image, ks: Sequence[int] = (1, 5, 10), block: int = 1024
) -> dict[str, float]:
  """R@k in both directions for captions ``text_emb`` of images ``image_emb`` (normalized)."""
  image_emb = jnp.asarray(image_emb, jnp.float32)
  text_emb = jnp.asarray(text_emb, jnp.float32)
  owner = np.asarray(text_to_image, np.int64)
  n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
  scores = jnp.dot(text_emb, image_emb.T, precision="highest")  # [N_txt, N_img]
  kmax_t2i = min(max(ks), n_img)
  kmax_i2t = min(max(ks), n_txt)
  t2i = np.asarray(_topk_indices(scores, kmax_t2i, block))  # images per caption
  i2t = np.asarray(_topk_indices(scores.T, kmax_i2t, block))  # captions per image
  t2i_hit = t2i == owner[:, None]
  i2t_hit = owner[i2t] == np.arange(n_img)[:, None]
  results = {}
  for k in ks:
    results[f"t2i_r{k}"] = float(t2i_hit[:, :k].any(axis=1).mean())
    results[f"i2t_r{k}"] = float(i2t_hit[:, :k].any(axis=1).mean())
  return results
