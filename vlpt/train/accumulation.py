"""Exact contrastive gradient accumulation (GradCache, Gao et al. 2021, Sec. 3.2).

A contrastive loss couples every example with every other, so summing per-micro-batch losses
changes the objective (fewer negatives). GradCache keeps all B negatives with activation memory
of B/k: (1) embed the k micro-batches without gradients; (2) compute the global loss and its
gradient with respect to the embeddings, the temperature and the bias on the whole batch; (3)
re-run each micro-batch forward and back-propagate its slice of the embedding gradient into the
tower parameters. The temperature and bias are used once, outside the towers, so their gradient
comes from step (2) exactly once — open_clip's accumulation adds it once per micro-batch
(k times too large).

Micro-batch ``j`` takes rows ``[j*b/k, (j+1)*b/k)`` of *every* device's block (b rows per device),
so each micro-batch is spread over all devices and reassembling the embeddings restores the
original row order and sharding without any communication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def split_micro_batches(x: jax.Array, k: int, n: int) -> jax.Array:
  """[B, ...] (contiguous blocks over n devices) -> [k, B/k, ...], each micro-batch on all devices."""
  b = x.shape[0] // n
  y = x.reshape(n, k, b // k, *x.shape[1:])
  return jnp.swapaxes(y, 0, 1).reshape(k, x.shape[0] // k, *x.shape[1:])


def merge_micro_batches(x: jax.Array, n: int) -> jax.Array:
  """The inverse of :func:`split_micro_batches`."""
  k, m = x.shape[:2]
  y = x.reshape(k, n, m // n, *x.shape[2:])
  return jnp.swapaxes(y, 0, 1).reshape(k * m, *x.shape[2:])


def accumulated_value_and_grad(
  embed: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
  logit_params: Callable[[Any], tuple[jax.Array, jax.Array]],
  loss: Callable[..., tuple[jax.Array, dict]],
  params: Any,
  images: jax.Array,
  text: jax.Array,
  *extra: jax.Array,
  k: int,
  n: int,
) -> tuple[tuple[jax.Array, dict], Any]:
  """((loss, metrics), grads) of ``loss(embed(params, batch), logit_params(params))``.

  ``embed(params, images, text, *extra) -> (image_emb, text_emb)``; ``extra`` are further
  per-example inputs (e.g. patch-dropout keys), split into micro-batches like the images;
  ``logit_params(params) -> (scale, bias)``; ``loss(image_emb, text_emb, scale, bias) ->
  (loss, metrics)`` on the whole batch.
  """
  inputs_k = tuple(split_micro_batches(x, k, n) for x in (images, text, *extra))

  def embed_one(_, micro):
    return None, embed(params, *micro)

  _, (image_emb, text_emb) = jax.lax.scan(embed_one, None, inputs_k)
  image_emb = jax.lax.stop_gradient(merge_micro_batches(image_emb, n))
  text_emb = jax.lax.stop_gradient(merge_micro_batches(text_emb, n))
  (scale, bias), scalar_vjp = jax.vjp(logit_params, params)
  (value, metrics), (g_image, g_text, g_scale, g_bias) = jax.value_and_grad(
    loss, argnums=(0, 1, 2, 3), has_aux=True
  )(image_emb, text_emb, scale, bias)
  (grads,) = scalar_vjp((g_scale, g_bias))

  def backward(acc, micro):
    inputs, g_img, g_txt = micro
    _, vjp = jax.vjp(lambda p: embed(p, *inputs), params)
    (g,) = vjp((g_img, g_txt))
    return jax.tree.map(jnp.add, acc, g), None

  grads, _ = jax.lax.scan(
    backward, grads, (inputs_k, split_micro_batches(g_image, k, n), split_micro_batches(g_text, k, n))
  )
  return (value, metrics), grads
