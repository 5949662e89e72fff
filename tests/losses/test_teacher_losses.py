"""Teacher losses in the trainer: distillation and CWCL against a frozen vlpt.load-able teacher."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt.config import load_config
from vlpt.data.normalization import normalize_images
from vlpt.data.preprocess import Preprocess
from vlpt.data.tokenizers import build_tokenizer
from vlpt.errors import ConfigError
from vlpt.losses import cwcl_loss, distillation_loss
from vlpt.models import build_model
from vlpt.train.objectives.distillation import load_teacher
from vlpt.train.setup import build
from vlpt.weights.formats import Bundle, write_bundle
from vlpt.weights.state import flat_params

from conftest import REPO
from e2e_utils import one_train_step, resolved_model_config


def demo_config():
  return load_config(os.path.join(REPO, "configs", "demo.py:tiny"))


def _export_teacher(config, dst, *, tokenizer=None, embed_dim=48, seed=11):
  tok = build_tokenizer(config.data.tokenizer)
  model_cfg = resolved_model_config(config, tok)
  model_cfg = dict(model_cfg, embed_dim=embed_dim)  # a teacher may embed differently
  model = build_model(model_cfg, nnx.Rngs(seed))
  write_bundle(
    Bundle(
      model_cfg,
      flat_params(model),
      tokenizer or config.data.tokenizer.to_dict(),
      Preprocess(image_size=config.data.image_size),
      "test",
    ),
    str(dst),
  )
  return model


@pytest.mark.parametrize("name", ["distill", "cwcl"])
def test_teacher_loss_step_matches_the_dense_reference(name, tmp_path):
  config = demo_config()
  teacher = _export_teacher(config, tmp_path / "teacher")
  config.loss.name = name
  config.teacher.checkpoint = str(tmp_path / "teacher")
  setup, before, host, _, m = one_train_step(config)
  params = before.params
  # the same loss from whole-batch arrays on one host
  student = nnx.merge(setup.graphdef, params)
  images = normalize_images(jnp.asarray(host["image"]), "clip")
  s_img, s_txt = student.encode_image(images), student.encode_text(host["text"])
  t_img, t_txt = teacher.encode_image(images), teacher.encode_text(host["text"])
  scale = jnp.exp(params["logit_scale"])
  if name == "distill":
    contrastive, distill = distillation_loss(
      s_img, s_txt, scale, t_img, t_txt, jnp.exp(teacher.logit_scale[...])
    )
    assert m["contrastive_loss"] == pytest.approx(float(contrastive), abs=1e-5)
    assert m["distill_loss"] == pytest.approx(float(distill), abs=1e-5)
    expected = contrastive + distill
  else:
    expected = cwcl_loss(s_img, s_txt, scale, t_img, t_txt)
  assert m["loss"] == pytest.approx(float(expected), abs=1e-5)
  assert np.isfinite(m["grad_norm"]) and m["grad_norm"] > 0


def test_teacher_configuration_errors(tmp_path):
  config = demo_config()
  config.loss.name = "distill"
  with pytest.raises(ConfigError, match="needs a teacher"):
    build(config)
  config = demo_config()
  _export_teacher(config, tmp_path / "teacher")
  config.teacher.checkpoint = str(tmp_path / "teacher")
  with pytest.raises(ConfigError, match="teacher losses only"):
    build(config)
  # a teacher that reads other token ids is refused before training
  config = demo_config()
  _export_teacher(config, tmp_path / "bpe", tokenizer={"name": "clip_bpe", "context_length": 16})
  config.loss.name = "cwcl"
  config.teacher.checkpoint = str(tmp_path / "bpe")
  with pytest.raises(ConfigError, match="tokenizes text differently"):
    load_teacher(build(config))
