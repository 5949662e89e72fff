"""HF exports carry a complete tokenizer config: AutoTokenizer / AutoProcessor truncate where the
model's positions end, and round trips keep the source's settings."""

import json

import numpy as np
import pytest

from vlpt.cli import convert
from vlpt.config import load_config

from e2e_utils import DEMO, export_random_model

LONG = "a photo of a " + " ".join(["very"] * 40) + " red circle"


def test_hf_export_tokenizer_truncates_at_the_context_length(torch_reference, tmp_path):
  torch, _ = torch_reference
  from transformers import AutoProcessor, AutoTokenizer, CLIPModel

  config = load_config(DEMO + ":tiny")
  config.data.tokenizer = {"name": "clip_bpe", "context_length": 16}
  export_random_model(config, tmp_path / "vlpt")
  assert convert.main([str(tmp_path / "vlpt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
  tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert tok.model_max_length == 16 and tok.eos_token == "<|endoftext|>"
  assert len(tok(LONG, truncation=True)["input_ids"]) == 16
  processor = AutoProcessor.from_pretrained(str(tmp_path / "hf"))
  assert type(processor).__name__ == "CLIPProcessor"
  model = CLIPModel.from_pretrained(str(tmp_path / "hf"))
  inputs = processor(
    text=["a red circle", LONG],
    images=[np.zeros((32, 32, 3), np.uint8)],
    return_tensors="pt",
    padding=True,
    truncation=True,
  )
  with torch.no_grad():
    logits = model(**inputs).logits_per_image
  assert logits.shape == (1, 2) and torch.isfinite(logits).all()
  # a round trip keeps the source's settings
  settings = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
  settings["errors"] = "strict"
  (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(settings))
  assert convert.main([str(tmp_path / "hf"), str(tmp_path / "again"), "--to", "hf"]) == 0
  again = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
  assert again["errors"] == "strict" and again["model_max_length"] == 16


def test_zero_shot_pipeline_with_a_label_longer_than_the_context(torch_reference, tmp_path):
  """docs/own-data.md's pipeline recipe: with the truncation transformers drops restored, the
  pipeline's probabilities equal vlpt's own zero-shot (its tokenizer truncates) on the export."""
  import functools

  import jax
  from PIL import Image
  from transformers import pipeline

  import vlpt

  config = load_config(DEMO + ":tiny")
  config.data.tokenizer = {"name": "clip_bpe", "context_length": 16}
  export_random_model(config, tmp_path / "vlpt", seed=3)
  assert convert.main([str(tmp_path / "vlpt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
  labels = ["red circle", "blue square", LONG]
  pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # (model size:
  image = Image.fromarray(pixels)  # HF's resize and crop leave it as is, as vlpt's do)

  classify = pipeline("zero-shot-image-classification", model=str(tmp_path / "hf"))
  # transformers 5 drops tokenizer_kwargs and never truncates CLIP labels: when this starts to
  # pass, docs/own-data.md's recipe is no longer needed
  with pytest.raises(ValueError, match="max_position_embeddings"):
    classify(image, candidate_labels=labels)
  classify.preprocess = functools.partial(classify.preprocess, tokenizer_kwargs={"truncation": True})
  got = {r["label"]: r["score"] for r in classify(image, candidate_labels=labels)}

  model = vlpt.load(str(tmp_path / "vlpt"))
  ids = model.tokenizer([f"This is a photo of {x}." for x in labels])  # (the pipeline's template)
  assert ids.shape == (3, 16)
  img = model.encode_image(model.preprocess.batch([image]))
  txt = model.encode_text(ids)
  want = np.asarray(jax.nn.softmax(model.logit_scale * img @ txt.T, axis=-1))[0]
  np.testing.assert_allclose([got[x] for x in labels], want, atol=1e-5)


def test_a_tokenizer_the_target_cannot_carry_is_refused(tmp_path, capsys):
  """The demo's word tokenizer has no HF or open_clip form: such an export would load with
  CLIP's ids (another tokenizer) silently, so it is refused before anything is written."""
  config = load_config(DEMO + ":tiny")  # (the word tokenizer)
  export_random_model(config, tmp_path / "vlpt")
  for target in ("hf", "open_clip"):
    assert convert.main([str(tmp_path / "vlpt"), str(tmp_path / target), "--to", target]) == 2
    err = capsys.readouterr().err
    assert "tokenizer 'word' (demo-only" in err and "export with --to vlpt" in err
    assert not (tmp_path / target).exists() and not (tmp_path / f"{target}.partial").exists()
  assert convert.main([str(tmp_path / "vlpt"), str(tmp_path / "again")]) == 0
