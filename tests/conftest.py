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
  pytest.importorskip("torch")
  from vlpt.reference import import_torch_reference
  try:
    return import_torch_reference()
  except ImportError as e:  # open_clip missing: the reference extra is not installed
    pytest.skip(f"PyTorch reference stack unavailable: {e}")


@pytest.fixture
def cli_env():
  """Environment for CLI subprocesses: repo on the path, 8 simulated devices."""
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  return env


PYTHON = sys.executable
