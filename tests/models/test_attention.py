"""config.model.attention reaches every attention call; cuDNN is refused up front without a GPU."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from vlpt.config import load_config
from vlpt.errors import ConfigError
from vlpt.models import build_model
from vlpt.train.validation import validate

from conftest import REPO
from e2e_utils import resolved_model_config


def _coca_config():
  return load_config(os.path.join(REPO, "configs", "demo.py:coca,tiny"))


def _forward(config, monkeypatch):
  """Runs the CoCa towers, pooler and decoder; returns every implementation attention was given."""
  seen = []
  real = jax.nn.dot_product_attention

  def recording(*args, implementation="missing", **kwargs):
    seen.append(implementation)
    return real(*args, implementation=implementation, **kwargs)

  model = build_model(resolved_model_config(config), nnx.Rngs(0))
  images = np.zeros((2, config.data.image_size, config.data.image_size, 3), np.float32)
  ids = np.ones((2, config.data.tokenizer.context_length), np.int32)
  with monkeypatch.context() as m:
    m.setattr(jax.nn, "dot_product_attention", recording)
    pooled, tokens = model.image_features(images)
    _, logits, _ = model.caption_logits(ids, tokens)
  return seen, (pooled, logits)


def test_every_attention_call_gets_the_configured_implementation(monkeypatch):
  config = _coca_config()
  seen, (pooled, logits) = _forward(config, monkeypatch)
  # image blocks + attentional pooler + text blocks + decoder self- and cross-attention
  assert len(seen) >= 6 and set(seen) == {"xla"}
  config.model.attention = "auto"
  seen_auto, (pooled_auto, logits_auto) = _forward(config, monkeypatch)
  assert len(seen_auto) == len(seen) and set(seen_auto) == {None}
  # on this CPU, JAX's choice is the XLA path: the same numbers
  np.testing.assert_allclose(pooled_auto, pooled, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(logits_auto, logits, rtol=1e-6, atol=1e-6)


def test_cudnn_needs_a_gpu_and_names_are_checked():
  config = _coca_config()
  config.model.attention = "cudnn"
  if jax.default_backend() != "gpu":
    with pytest.raises(ConfigError, match="config.model.attention='cudnn' needs a GPU"):
      validate(config, num_devices=jax.device_count())
  config.model.attention = "flash"
  with pytest.raises(ConfigError, match="config.model.attention='flash': choose one of xla, cudnn"):
    validate(config, num_devices=jax.device_count())
  config.model.attention = "auto"
  validate(config, num_devices=jax.device_count())


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention runs on GPUs only")
def test_cudnn_matches_xla_in_bf16(monkeypatch):
  """Run where a GPU is present (not in CPU CI): cuDNN's fused kernel vs XLA, bf16 compute."""
  config = _coca_config()
  config.model.dtype = "bfloat16"
  _, (pooled, logits) = _forward(config, monkeypatch)
  config.model.attention = "cudnn"
  _, (pooled_cudnn, logits_cudnn) = _forward(config, monkeypatch)
  np.testing.assert_allclose(np.float32(pooled_cudnn), np.float32(pooled), atol=2e-2)
  np.testing.assert_allclose(np.float32(logits_cudnn), np.float32(logits), atol=5e-2)
