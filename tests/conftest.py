"""Test setup: 8 simulated CPU devices (set before JAX starts), absl flags, reference stack."""

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end runs of minutes (slow tier)")


@pytest.fixture(scope="session")
def torch_reference():
  """Imports the PyTorch reference stack (CPU torch + CUDA torchvision wheel workaround)."""
  torch = pytest.importorskip("torch")
  lib = torch.library.Library("torchvision", "FRAGMENT")
  for op in ("nms", "qnms"):
    try:
      lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
      pass
  open_clip = pytest.importorskip("open_clip")
  return torch, open_clip


@pytest.fixture
def cli_env():
  """Environment for CLI subprocesses: repo on the path, 8 simulated devices."""
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  return env


PYTHON = sys.executable
