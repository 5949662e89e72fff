"""``vlpt.load``: any supported checkpoint as ready-to-use encoders, tokenizer and preprocessing.

Sources (detected from the path; :func:`vlpt.train.initialization.read_checkpoint`):
- a vlpt export directory (``vlpt_model.json`` + ``model.safetensors``, written by
  ``vlpt-convert --to vlpt`` or :meth:`Pretrained.save`);
- a vlpt training workdir (``vlpt_config.json`` + ``checkpoints/``): its latest checkpoint, with
  its EMA weights when it has them (``config.ema.decay``; ``weights="raw"``: its parameters);
- an open_clip directory (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``);
- an HF transformers ``CLIPModel`` / ``SiglipModel`` / ``Siglip2Model`` (NaFlex) directory
  (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), with its own tokenizer files
  when present; a NaFlex model's ``preprocess`` returns, and its ``encode_image`` takes, the
  patch dicts of transformers' Siglip2ImageProcessor;
- a big_vision SigLIP ``.npz``;
- ``builtin:NAME``: a small model vlpt trains itself, offline, on first use and caches
  (:mod:`vlpt.weights.builtin`; ``builtin:demo`` is a tiny CLIP).
The formats' readers and writers live in :mod:`vlpt.weights.formats`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpt.data.tokenizers import build_tokenizer
from vlpt.errors import WeightsError
from vlpt.models import build_model
from vlpt.train.initialization import read_checkpoint
from vlpt.weights.formats import Bundle, write_bundle
from vlpt.weights.resize import resize_model
from vlpt.weights.state import assign_params


class Pretrained:
  """A loaded model: jitted L2-normalized encoders, its tokenizer and image preprocessing."""

  def __init__(self, bundle: Bundle, *, dtype: str = "float32", attention: str = "xla"):
    self.bundle = bundle
    # the kernels are this machine's choice, not the checkpoint's (a model trained with cuDNN
    # attention loads on a CPU)
    self.config = dict(bundle.model, dtype=dtype, attention=attention)
    self.model = build_model(self.config, nnx.Rngs(0))
    assign_params(self.model, bundle.params)
    self.preprocess = bundle.preprocess
    self._tokenizer = None
    graphdef, state = nnx.split(self.model)
    self._image = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(x))
    self._text = jax.jit(lambda s, t: nnx.merge(graphdef, s).encode_text(t))
    self._state = state

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      if not self.bundle.tokenizer:
        raise WeightsError(
          f"this {self.bundle.source} checkpoint ships no tokenizer; pass "
          "vlpt.load(..., tokenizer={'name': ..., ...})"
        )
      self._tokenizer = build_tokenizer(self.bundle.tokenizer)
    return self._tokenizer

  def encode_image(self, images) -> jax.Array:
    """Preprocessed float images [B, H, W, 3] -> L2-normalized embeddings [B, D].

    A NaFlex model (HF ``Siglip2Model``) also takes the processor's dict: ``pixel_values``
    [B, N, p*p*3], ``pixel_attention_mask`` [B, N], ``spatial_shapes`` [B, 2] (numpy, torch or
    jax arrays; ``preprocess(image, max_num_patches=N)`` or transformers' Siglip2ImageProcessor).
    One compilation serves each N, whatever the images' aspect ratios.
    """
    if isinstance(images, Mapping):
      from vlpt.models.vit import NAFLEX_KEYS

      dtypes = (jnp.float32, jnp.int32, jnp.int32)
      images = {k: jnp.asarray(np.asarray(images[k]), dt) for k, dt in zip(NAFLEX_KEYS, dtypes)}
      return self._image(self._state, images)
    return self._image(self._state, jnp.asarray(images, jnp.float32))

  def encode_text(self, token_ids) -> jax.Array:
    """Token ids [B, L] -> L2-normalized embeddings [B, D]."""
    return self._text(self._state, jnp.asarray(token_ids, jnp.int32))

  @property
  def logit_scale(self) -> float:
    return float(math.exp(float(self.bundle.params["logit_scale"])))

  @property
  def logit_bias(self) -> float | None:
    b = self.bundle.params.get("logit_bias")
    return None if b is None else float(b)

  def save(self, dst: str, to: str = "vlpt") -> None:
    write_bundle(self.bundle, dst, to)


def load(
  path: str,
  *,
  image_size: int | None = None,
  context_length: int | None = None,
  tokenizer: dict | None = None,
  dtype: str = "float32",
  attention: str = "xla",
  weights: str = "ema",
) -> Pretrained:
  """Loads any supported source (see the module docstring); optionally resizes positions.

  ``dtype`` / ``attention``: the compute dtype and attention kernel (config.model.attention's
  values) the encoders run with here. ``weights``: a workdir's EMA weights when it has them
  ("ema") or its raw parameters ("raw"); other sources have one set of weights.
  """
  bundle = read_checkpoint(path, weights=weights)
  if image_size or context_length:
    model, params = resize_model(
      bundle.model, bundle.params, image_size=image_size, context_length=context_length
    )
    pre = bundle.preprocess
    if image_size:
      pre = dataclasses.replace(pre, image_size=image_size)
    tok = bundle.tokenizer
    if context_length and tok:
      tok = dict(tok, context_length=context_length)
    bundle = Bundle(model, params, tok, pre, bundle.source)
  if tokenizer is not None:
    bundle.tokenizer = dict(tokenizer)
  return Pretrained(bundle, dtype=dtype, attention=attention)
