"""HF exports carry a complete tokenizer config: AutoTokenizer / AutoProcessor truncate where the
model's positions end, and round trips keep the source's settings."""

import json

import numpy as np

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
