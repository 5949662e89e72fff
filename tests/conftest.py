"""Test setup: 8 simulated CPU devices (set before JAX starts), absl flags, reference stack."""

import importlib
import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

# libtpu (in the test extra, for vlpt-plan's TPU compiles) makes JAX try a TPU first at every
# start: without a TPU or GPU device file, the tests run on the CPU directly (as the CLIs do)
from vlpt.distributed import cpu_unless_accelerator  # noqa: E402 (imports no JAX)

cpu_unless_accelerator()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end runs of minutes (slow tier)")


REFERENCE_HINT = (
  "parity tests need the reference stack: pip install -e '.[test,reference]' and "
  "pip install --no-deps clip_benchmark==1.6.2 (as .ci/run does)"
)


def require(module: str):
  """Imports a module a test compares against; without it the test FAILS, never skips, so a CI
  that lacks the reference stack cannot pass by running fewer checks."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    pytest.fail(f"{module} is not importable ({e}); {REFERENCE_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def torch_reference():
  """Imports the PyTorch reference stack (CPU torch + CUDA torchvision wheel workaround)."""
  require("torch")
  from vlpt.reference import import_torch_reference

  try:
    return import_torch_reference()
  except ImportError as e:  # open_clip missing: the reference extra is not installed
    pytest.fail(f"PyTorch reference stack unavailable ({e}); {REFERENCE_HINT}", pytrace=False)


def cli_environment() -> dict:
  """Environment for CLI subprocesses: repo on the path, CPU devices."""
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture
def cli_env():
  return cli_environment()


@pytest.fixture(scope="session")
def gcs_server():
  """A GCS emulator on loopback for the session; its environment reaches CLI subprocesses."""
  from gcs_server import GCSServer

  server = GCSServer()
  yield server
  server.stop()


@pytest.fixture
def gcs_bucket(gcs_server):
  """``gs://NAME`` of a new empty bucket on the emulator."""
  return f"gs://{gcs_server.bucket()}"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """``reference_run(kind)``: the tiny demo trained once per session on 8 devices in one process,
  shared by every test that compares against it (read-only: copy it before training on).

  ``"short"``: configs/demo.py:tiny as configured (20 steps, checkpoints at 10 and 20, held-out
  evaluation at the end); ``"long"``: 80 steps, a checkpoint every 10, no evaluation.
  """
  from e2e_utils import REFERENCE_OVERRIDES, cli, env_with_devices, run

  runs = {}

  def get(kind: str):
    if kind not in runs:
      workdir = tmp_path_factory.mktemp(f"reference-{kind}") / "run"
      proc = run(
        cli("vlpt.cli.train", workdir, *REFERENCE_OVERRIDES[kind]),
        env_with_devices(cli_environment(), 8),
      )
      (workdir.parent / "stdout.txt").write_text(proc.stdout)  # beside the workdir, not in it
      runs[kind] = workdir
    return runs[kind]

  return get


PYTHON = sys.executable
