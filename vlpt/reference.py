"""Imports the PyTorch reference stack (open_clip, torchvision) that parity tests and
benchmarks compare against, on CPU torch.

The torchvision wheel pip resolves next to a CPU torch is a CUDA build whose import fails on two
missing operator schemas (``torchvision::nms``, ``qnms``); defining them first lets the pure-Python
parts (transforms, models) import. Not needed by vlpt itself.
"""

from __future__ import annotations


def import_torch_reference():
  """-> (torch, open_clip), importable on CPU torch with the CUDA torchvision wheel."""
  import torch

  lib = torch.library.Library("torchvision", "FRAGMENT")
  for op in ("nms", "qnms"):
    try:
      lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (a real torchvision build, or a second call)
      pass
  import open_clip

  return torch, open_clip
