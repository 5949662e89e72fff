"""Reading .bin/.pt needs torch >= 2.6: before it, torch.load(weights_only=True) can be made to run
pickled code (CVE-2025-32434), so vlpt refuses with one line instead of loading."""

import numpy as np
import pytest
import torch  # the reference extra; test_weights etc. fail without it too

from vlpt.errors import WeightsError
from vlpt.weights.io import read_tensors, read_torch


@pytest.fixture
def checkpoint(tmp_path):
  path = tmp_path / "model.bin"
  torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(path))
  return str(path)


@pytest.mark.parametrize(
  "version", ["2.5.1+cu121", "2.4.0", "1.13.1", "2.6.0a0", "2.6.0.dev20241112", "garbage"]
)
def test_old_torch_is_refused_before_anything_is_unpickled(checkpoint, monkeypatch, version):
  def never(*args, **kwargs):
    raise AssertionError("torch.load must not run on a torch without the safe weights_only")

  monkeypatch.setattr(torch, "__version__", version)
  monkeypatch.setattr(torch, "load", never)
  for read in (read_torch, read_tensors):
    with pytest.raises(WeightsError) as info:
      read(checkpoint)
    message = str(info.value)
    assert "\n" not in message
    assert "safetensors" in message and "2.6" in message and "CVE-2025-32434" in message


@pytest.mark.parametrize("version", ["2.6.0", "2.6.0.post1", "2.10.1+cpu", "3.0.0"])
def test_safe_torch_reads_the_state_dict(checkpoint, monkeypatch, version):
  monkeypatch.setattr(torch, "__version__", version)  # 2.10 is newer than 2.6 (not a string order)
  tensors = read_tensors(checkpoint)
  np.testing.assert_array_equal(tensors["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
