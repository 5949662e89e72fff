"""The fine-tuning notebook executes end to end on a small random open_clip checkpoint (slow tier).

The checkpoint is written the way open_clip saves one (``open_clip_config.json`` with the model and
preprocessing configs, ``open_clip_model.safetensors``); without the PyTorch reference stack the
same layout is written by vlpt's own exporter. Fine-tuning on the demo image folder must raise
the held-out zero-shot accuracy, and every export must reload to the same embeddings.
"""

import ast
import json
import os

import pytest

from conftest import REPO, require

# ViT: 32 px, patch 8, width 64, 2 layers (4 heads of 16); text: width 64, 2 layers, 4 heads,
# context 77 (CLIP's BPE vocabulary); embedding 64
OPEN_CLIP_CFG = dict(embed_dim=64,
                     vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2))
PREPROCESS_CFG = dict(size=32, mean=[0.48145466, 0.4578275, 0.40821073],
                      std=[0.26862954, 0.26130258, 0.27577711], interpolation="bicubic",
                      resize_mode="shortest")


def _random_open_clip_checkpoint(dst):
  os.makedirs(dst)
  try:
    from vlpt.reference import import_torch_reference
    torch, open_clip = import_torch_reference()
  except ImportError:  # no reference stack: the same layout through vlpt's exporter
    from flax import nnx

    from vlpt.models import build_model
    from vlpt.data.preprocess import Preprocess
    from vlpt.weights.formats import Bundle, write_bundle
    from vlpt.weights.state import flat_params
    tower = dict(variant="B", width=64, depth=2, heads=4, mlp_dim=256)
    model_cfg = dict(name="clip", embed_dim=64, image=dict(tower, variant="B/8", image_size=32),
                     text=dict(tower, vocab_size=49408, context_length=77))
    os.rmdir(dst)
    write_bundle(Bundle(model_cfg, flat_params(build_model(model_cfg, nnx.Rngs(0))),
                        {"name": "clip_bpe", "context_length": 77}, Preprocess(image_size=32),
                        "random"), dst, to="open_clip")
    return
  from safetensors.torch import save_file
  torch.manual_seed(0)
  model = open_clip.model.CLIP(**OPEN_CLIP_CFG)
  save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
            os.path.join(dst, "open_clip_model.safetensors"))
  with open(os.path.join(dst, "open_clip_config.json"), "w") as f:
    json.dump({"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": PREPROCESS_CFG}, f)


def _tagged_result(nb, tag):
  cell = next(c for c in nb.cells if tag in c.metadata.get("tags", ()))
  result = next(o for o in cell.outputs if o.get("output_type") == "execute_result")
  return ast.literal_eval(result["data"]["text/plain"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_finetune_notebook_runs_and_raises_zero_shot_accuracy(tmp_path, monkeypatch):
  nbformat = require("nbformat")
  nbclient = require("nbclient")
  checkpoint = str(tmp_path / "random_open_clip")
  _random_open_clip_checkpoint(checkpoint)
  # the kernel inherits this environment (and the conftest's 8 simulated CPU devices)
  monkeypatch.setenv("VLPT_PRETRAINED", checkpoint)
  monkeypatch.setenv("VLPT_NOTEBOOK_STEPS", "120")
  monkeypatch.setenv("VLPT_NOTEBOOK_LR", "1e-3")  # random weights: a pre-training-size rate
  monkeypatch.setenv("VLPT_WORKDIR", str(tmp_path / "workdir"))
  nb = nbformat.read(os.path.join(REPO, "notebooks", "finetune.ipynb"), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=540, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3  # training samples, loss/accuracy curves, retrieval grid
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert f"PRETRAINED = {checkpoint}" in text and "(open_clip format)" in text
  accuracy = _tagged_result(nb, "accuracy")
  assert accuracy["after"] > accuracy["before"] + 0.1, accuracy  # chance is 1/24
  round_trip = _tagged_result(nb, "round_trip")
  assert set(round_trip) == {"vlpt", "open_clip", "hf"}
  assert max(round_trip.values()) < 1e-5, round_trip
  rows = [json.loads(line) for line in open(tmp_path / "workdir" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "heldout/zeroshot/top1" in r][0] == 0  # the "before" row
