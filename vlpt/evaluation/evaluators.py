"""Evaluators run during training and by ``vlpt-eval``: zero-shot classification and retrieval.

Metric definitions follow CLIP_benchmark (see ``vlpt.evaluation.metrics``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from vlpt.data.pipeline import EvalSet
from vlpt.evaluation import metrics as M
from vlpt.evaluation.embedding import embed_in_batches
from vlpt.sharding import batch_sharding, replicated

NORMALIZATION = {
    # OpenAI CLIP's dataset statistics (Radford et al. 2021, released preprocessing)
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # SigLIP / big_vision: [-1, 1]
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def normalize_images(images_uint8: jax.Array, normalization: str) -> jax.Array:
  """uint8 [.., 3] -> float32, scaled to [0, 1] then standardized with the family's constants."""
  mean, std = NORMALIZATION[normalization]
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class Encoders:
  """Jitted, sharded image/text encoders over the current parameters."""

  def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, param_shardings: Any,
               normalization: str):
    self.mesh = mesh

    def image_fn(params, images):
      model = nnx.merge(graphdef, params)
      return model.encode_image(normalize_images(images, normalization))

    def text_fn(params, ids):
      return nnx.merge(graphdef, params).encode_text(ids)

    self._image = jax.jit(image_fn, in_shardings=(param_shardings, batch_sharding(mesh, 4)),
                          out_shardings=replicated(mesh))
    self._text = jax.jit(text_fn, in_shardings=(param_shardings, batch_sharding(mesh, 2)),
                         out_shardings=replicated(mesh))

  def images(self, params, images: np.ndarray, global_batch: int) -> np.ndarray:
    return embed_in_batches(lambda x: self._image(params, x), images, mesh=self.mesh,
                            global_batch=global_batch)

  def texts(self, params, ids: np.ndarray, global_batch: int) -> np.ndarray:
    return embed_in_batches(lambda x: self._text(params, x), ids, mesh=self.mesh,
                            global_batch=global_batch)


def evaluate_set(encoders: Encoders, params: Any, data: EvalSet, global_batch: int
                 ) -> dict[str, float]:
  """Zero-shot classification and caption retrieval on one held-out set."""
  image_emb = encoders.images(params, data.images, global_batch)
  caption_emb = encoders.texts(params, data.captions, global_batch)
  c, t, length = data.class_prompts.shape
  prompt_emb = encoders.texts(params, data.class_prompts.reshape(c * t, length), global_batch)
  classifier = M.zeroshot_classifier(prompt_emb.reshape(c, t, -1))
  logits = np.asarray(image_emb) @ np.asarray(classifier).T
  results = {f"{data.name}/zeroshot/{k}": v
             for k, v in M.zeroshot_metrics(logits, data.labels).items()}
  retrieval = M.retrieval_metrics(image_emb, caption_emb, data.caption_image)
  results.update({f"{data.name}/retrieval/{k}": v for k, v in retrieval.items()})
  return results

