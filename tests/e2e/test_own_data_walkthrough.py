"""docs/own-data.md, run as written: every ``bash`` and ``python`` block in order, in one fresh
directory (holding the checkout's ``configs/``), on the images its first block writes. The one
change: training runs fewer steps (overrides appended to each ``vlpt-train`` command, which take
precedence)."""

import os
import re
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, REPO

DOC = os.path.join(REPO, "docs", "own-data.md")
FEWER_STEPS = {
  "runs/own": (
    "--config.total_steps=150 --config.eval_every_steps=150 --config.checkpoint_every_steps=50 "
    "--config.log_every_steps=25"
  ),
  "runs/finetune": "--config.total_steps=20 --config.eval_every_steps=20 --config.log_every_steps=10",
}
# the PyTorch reference stack on this CPU machine needs torchvision's operator schemas defined
# first (vlpt.reference explains why); not part of the page
TORCH_PREAMBLE = "from vlpt.reference import import_torch_reference\nimport_torch_reference()\n"


def blocks(path=DOC):
  """[(language, code)] of the page's bash and python blocks, in order."""
  text = open(path, encoding="utf-8").read()
  return [
    (lang, code)
    for lang, code in re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    if lang in ("bash", "python")
  ]


def with_fewer_steps(code):
  lines = code.replace("\\\n", " ").splitlines()
  out = []
  for line in lines:
    if line.startswith("vlpt-train"):
      workdir = re.search(r"--workdir (\S+)", line).group(1)
      line = f"{line} {FEWER_STEPS[workdir]}"
    out.append(line)
  return "\n".join(out) + "\n"


def run_block(lang, code, cwd, env):
  if lang == "bash":
    command = ["bash", "-euo", "pipefail", "-c", with_fewer_steps(code)]
  else:
    uses_torch = re.search(r"import (transformers|open_clip)|from transformers", code)
    preamble = TORCH_PREAMBLE if uses_torch else ""
    command = [PYTHON, "-c", preamble + code]
  proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, (
    f"{lang} block failed:\n{code}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  )
  return proc.stdout + proc.stderr


def test_the_page_lists_what_the_walkthrough_needs():
  found = blocks()
  assert [lang for lang, _ in found].count("python") == 4
  text = "\n".join(code for _, code in found)
  for command in ("vlpt-data build", "vlpt-train", "vlpt-eval --workdir", "vlpt-convert", "pipeline("):
    assert command in text, command


@pytest.mark.slow
def test_own_data_walkthrough(tmp_path, cli_env, torch_reference):
  env = dict(cli_env, PATH=os.path.dirname(PYTHON) + os.pathsep + cli_env.get("PATH", ""))
  (tmp_path / "configs").symlink_to(os.path.join(REPO, "configs"))
  outputs = [run_block(lang, code, tmp_path, env) for lang, code in blocks()]
  log = "\n".join(outputs)
  (tmp_path / "walkthrough.log").write_text(log)
  print("\n".join(line for line in log.splitlines() if re.search(r"eval @|done:|: |pipeline", line)))

  # 1-2: the folder and its shards
  assert len(list((tmp_path / "my_photos" / "heldout").rglob("*.jpg"))) == 240
  assert "wrote 3000 samples in 3 shard(s)" in log
  # 3-4: trained on BPE tokens, evaluated on the own folder (24 classes by folder name)
  rows = [line for line in log.splitlines() if "heldout/zeroshot/top1" in line]
  assert rows, log[-3000:]
  top1 = [float(v) for v in re.findall(r"heldout/zeroshot/top1=([0-9.]+)", log)]
  assert top1 and max(top1) > 1 / 24  # (better than chance: it learned from the captions)
  # 5: exports
  for name in ("hf/tokenizer_config.json", "open_clip/open_clip_config.json", "vlpt/vlpt_model.json"):
    assert (tmp_path / "exports" / name).is_file(), name
  # 6: transformers and open_clip agree on the trained model (HF's image processor rounds
  # differently: docs/models.md), and the pipeline classifies with a label longer than the context
  hf = _probabilities(log, "transformers:")
  oc = _probabilities(log, "open_clip:")
  np.testing.assert_allclose(hf, oc, atol=0.02)
  scores = re.findall(r"pipeline: ([0-9.]+) (.*)", log)
  assert len(scores) == 3 and any(label.startswith("red circle drawn very") for _, label in scores)
  assert abs(sum(float(s) for s, _ in scores) - 1) < 1e-3
  # 7: fine-tuned from the HF export with its own architecture
  assert "architecture from exports/hf (hf): config.model, data.image_size, data.tokenizer" in log
  assert "init: all parameters from exports/hf (hf checkpoint" in log
  assert (tmp_path / "runs" / "finetune" / "checkpoints").is_dir()


def _probabilities(log, prefix):
  line = next(line for line in log.splitlines() if line.startswith(prefix))
  return np.array([float(x) for x in re.findall(r"[0-9]*\.[0-9]+|[01]\b", line.split("[", 1)[1])])
