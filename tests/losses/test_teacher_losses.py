"""Teacher losses in the trainer: distillation and CWCL against a frozen vlpt.load-able teacher."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlpt.config import load_config
from vlpt.data.normalization import normalize_images
from vlpt.errors import ConfigError
from vlpt.losses import cwcl_loss, distillation_loss
from vlpt.train.objectives.distillation import load_teacher
from vlpt.train.setup import build

from conftest import REPO
from e2e_utils import export_random_model, one_train_step


def demo_config():
  return load_config(os.path.join(REPO, "configs", "demo.py:tiny"))


@pytest.mark.parametrize("name", ["distill", "cwcl"])
def test_teacher_loss_step_matches_the_dense_reference(name, tmp_path):
  config = demo_config()
  teacher, _ = export_random_model(config, tmp_path / "teacher", seed=11, embed_dim=48)
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
  export_random_model(config, tmp_path / "teacher", seed=11, embed_dim=48)
  config.teacher.checkpoint = str(tmp_path / "teacher")
  with pytest.raises(ConfigError, match="teacher losses only"):
    build(config)
  # a teacher that reads other token ids is refused before training
  config = demo_config()
  export_random_model(
    config, tmp_path / "bpe", seed=11, embed_dim=48, tokenizer={"name": "clip_bpe", "context_length": 16}
  )
  config.loss.name = "cwcl"
  config.teacher.checkpoint = str(tmp_path / "bpe")
  with pytest.raises(ConfigError, match="tokenizes text differently"):
    load_teacher(build(config))
