"""Exported weights are ordinary files: readable by the group and others under the usual umask."""

import os
import stat

import numpy as np

from vlpt.weights.io import write_safetensors


def test_safetensors_exports_follow_the_umask(tmp_path):
  previous = os.umask(0o022)
  try:
    write_safetensors(str(tmp_path / "a.safetensors"), {"w": np.zeros(3, np.float32)})
    os.umask(0o027)
    write_safetensors(str(tmp_path / "b.safetensors"), {"w": np.zeros(3, np.float32)})
  finally:
    os.umask(previous)
  assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(tmp_path / "b.safetensors").st_mode) == 0o640
