"""launch/local.py: environment wiring, device split, failure propagation, signal forwarding."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import PYTHON, REPO

LAUNCH = os.path.join(REPO, "launch", "local.py")


def test_wires_ranks_and_splits_devices(tmp_path, cli_env):
  script = (
    "import json, os; keys = ['VLPT_COORDINATOR', 'VLPT_NUM_PROCESSES', "
    "'VLPT_PROCESS_ID', 'XLA_FLAGS']; "
    f"open(os.path.join(r'{tmp_path}', os.environ['VLPT_PROCESS_ID']), 'w')"
    ".write(json.dumps({k: os.environ[k] for k in keys}))"
  )
  env = dict(cli_env, XLA_FLAGS="--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
  subprocess.run(
    [PYTHON, LAUNCH, "-n", "2", "--", PYTHON, "-c", script],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
    check=True,
  )
  rows = [json.loads((tmp_path / str(rank)).read_text()) for rank in range(2)]
  assert [r["VLPT_PROCESS_ID"] for r in rows] == ["0", "1"]
  assert rows[0]["VLPT_COORDINATOR"] == rows[1]["VLPT_COORDINATOR"]
  for r in rows:
    assert r["VLPT_NUM_PROCESSES"] == "2"
    assert r["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"


def test_a_failing_process_stops_the_others(cli_env):
  script = "import os, sys, time\nif os.environ['VLPT_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(120)"
  start = time.time()
  proc = subprocess.run(
    [PYTHON, LAUNCH, "-n", "2", "--", PYTHON, "-c", script],
    env=cli_env,
    capture_output=True,
    text=True,
    timeout=90,
  )
  assert proc.returncode == 3
  assert time.time() - start < 60
  assert "stopping the others" in proc.stderr


def test_sigterm_is_forwarded(tmp_path, cli_env):
  marker = tmp_path / "got"
  script = (
    "import os, signal, sys, time\n"
    f"def h(*a): open(r'{marker}' + os.environ['VLPT_PROCESS_ID'], 'w').close(); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, h)\n"
    f"open(r'{tmp_path}/ready' + os.environ['VLPT_PROCESS_ID'], 'w').close()\n"
    "time.sleep(60)"
  )
  proc = subprocess.Popen([PYTHON, LAUNCH, "-n", "2", "--", PYTHON, "-c", script], env=cli_env)
  deadline = time.time() + 30
  while not ((tmp_path / "ready0").exists() and (tmp_path / "ready1").exists()):
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0
  assert (tmp_path / "got0").exists() and (tmp_path / "got1").exists()


def test_usage_errors(cli_env):
  proc = subprocess.run(
    [sys.executable, LAUNCH, "-n", "3", "--devices", "8", "--", "true"],
    env=cli_env,
    capture_output=True,
    text=True,
    timeout=30,
  )
  assert proc.returncode != 0 and "cannot be split evenly" in proc.stderr
