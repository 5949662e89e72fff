#!/usr/bin/env python3
"""Run a vlpt command as N processes on this machine, like N hosts of a pod.

  python launch/local.py -n 2 -- vlpt-train --config configs/demo.py --workdir /tmp/run

Simulated CPU devices are split among the processes (the count in XLA_FLAGS, else --devices),
and each process gets the coordinator address and its rank for ``jax.distributed``. SIGTERM and
SIGINT are forwarded to every process; if one process fails, the others are stopped and this
launcher exits with its code.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  if "--" not in argv:
    sys.exit("usage: launch/local.py -n N [--devices D] -- COMMAND ...")
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("-n", "--num_processes", type=int, required=True)
  parser.add_argument(
    "--devices",
    type=int,
    default=None,
    help="total simulated CPU devices (default: XLA_FLAGS' count, else 8)",
  )
  parser.add_argument("--port", type=int, default=None)
  args = parser.parse_args(argv[:split])
  command = argv[split + 1 :]
  if not command:
    sys.exit("launch/local.py: no command after --")
  if args.num_processes < 1:
    sys.exit("launch/local.py: -n must be >= 1")
  return args, command


def process_env(base: dict[str, str], *, rank: int, n: int, port: int, devices: int) -> dict[str, str]:
  env = dict(base)
  flags = re.sub(rf"{DEVICE_FLAG}=\d+", "", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}={devices // n}".strip()
  env["VLPT_COORDINATOR"] = f"127.0.0.1:{port}"
  env["VLPT_NUM_PROCESSES"] = str(n)
  env["VLPT_PROCESS_ID"] = str(rank)
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def main(argv: list[str]) -> int:
  args, command = parse_args(argv)
  n = args.num_processes
  match = re.search(rf"{DEVICE_FLAG}=(\d+)", os.environ.get("XLA_FLAGS", ""))
  devices = args.devices or (int(match.group(1)) if match else 8)
  if devices % n:
    sys.exit(f"launch/local.py: {devices} devices cannot be split evenly over {n} processes")
  port = args.port or free_port()
  procs = [
    subprocess.Popen(command, env=process_env(os.environ, rank=r, n=n, port=port, devices=devices))
    for r in range(n)
  ]

  def forward(signum, _frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  exit_code = 0
  while [p.poll() for p in procs].count(None):
    failed = [p for p in procs if p.returncode not in (None, 0)]
    if failed and not exit_code:
      exit_code = failed[0].returncode
      print(
        f"launch/local.py: a process exited with {exit_code}; stopping the others",
        file=sys.stderr,
        flush=True,
      )
      for p in procs:
        if p.poll() is None:
          p.terminate()
      deadline = time.time() + 20
      while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.1)
  if not exit_code:
    exit_code = next((p.returncode for p in procs if p.returncode), 0)
  return 1 if exit_code < 0 else exit_code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
