#!/usr/bin/env python3
"""Run a vlpt job on a TPU VM pod slice: the same command on every worker.

  python launch/tpu.py --name clip-b16 --zone us-east5-b --accelerator_type v5litepod-16 \\
      --dry-run -- vlpt-train --config configs/demo.py --workdir gs://bucket/runs/clip-b16

Steps (each a gcloud command, printed by ``--dry-run``): create a queued resource (or
``--reuse`` an existing one) and wait until it is ACTIVE; copy this checkout to every worker and
install it (``pip install -e '.[tpu]'``); start the command on all workers with
``VLPT_DISTRIBUTED=auto`` (JAX finds the slice from the TPU metadata); stream worker 0's log.
Preemption of a spot/queued slice sends SIGTERM: vlpt-train checkpoints and exits; re-running
this launcher with ``--reuse`` on a fresh slice resumes from the (GCS) workdir.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import Job, add_job_args, job_from_args, split_command  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def remote_path(path: str) -> str:
  """``path`` as one word of the remote shell: quoted, except that a leading ``~/`` stays bare so
  the remote shell still expands it to the home directory."""
  if path == "~" or path == "~/":
    return path
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def commands(
  job: Job,
  *,
  zone: str,
  project: str | None,
  accelerator_type: str,
  runtime_version: str,
  spot: bool,
  reuse: bool,
  remote_dir: str,
  log: str,
) -> list[list[str]]:
  where = ["--zone", zone] + (["--project", project] if project else [])
  out = []
  if not reuse:
    create = [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "create",
      job.name,
      "--node-id",
      job.name,
      "--accelerator-type",
      accelerator_type,
      "--runtime-version",
      runtime_version,
      *where,
    ]
    out.append(create + (["--spot"] if spot else []))
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", job.name, *where]
  # scp's destination is an argument (scp's SFTP protocol takes it literally), not shell text;
  # everything after --command is run by the remote shell, so every value in it is quoted
  out.append(
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      "--recurse",
      "--worker=all",
      REPO,
      f"{job.name}:{remote_dir}",
      *where,
    ]
  )
  cd = f"cd {remote_path(remote_dir)}"
  out.append([*ssh, "--worker=all", "--command", f"{cd} && pip install -q -e '.[tpu]'"])
  env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (("VLPT_DISTRIBUTED", "auto"), *job.env))
  run = f"{cd} && {env} nohup {job.command_line} > {remote_path(log)} 2>&1 &"
  out.append([*ssh, "--worker=all", "--command", run])
  out.append([*ssh, "--worker=0", "--command", f"tail -n +1 -F {remote_path(log)}"])
  return out


def wait_active(name: str, zone: str, project: str | None, timeout_s: int = 3600) -> None:
  where = ["--zone", zone] + (["--project", project] if project else [])
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    state = subprocess.run(
      [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "describe",
        name,
        *where,
        "--format=value(state.state)",
      ],
      capture_output=True,
      text=True,
    ).stdout.strip()
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      sys.exit(f"launch/tpu.py: queued resource {name} is {state}")
    time.sleep(30)
  sys.exit(f"launch/tpu.py: queued resource {name} not ACTIVE after {timeout_s} s")


def main(argv: list[str]) -> int:
  opts, command = split_command(argv, "launch/tpu.py")
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_job_args(p)
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--accelerator_type", default="v5litepod-16")
  p.add_argument("--runtime_version", default="v2-alpha-tpuv5-lite")
  p.add_argument("--spot", action="store_true")
  p.add_argument("--reuse", action="store_true", help="use an existing TPU VM named --name")
  p.add_argument("--remote_dir", default="~/vlpt")
  p.add_argument("--log", default="~/vlpt-train.log")
  args = p.parse_args(opts)
  job = job_from_args(args, command, "launch/tpu.py")
  steps = commands(
    job,
    zone=args.zone,
    project=args.project,
    accelerator_type=args.accelerator_type,
    runtime_version=args.runtime_version,
    spot=args.spot,
    reuse=args.reuse,
    remote_dir=args.remote_dir,
    log=args.log,
  )
  if args.dry_run:
    for step in steps:
      print(shlex.join(step))
    return 0
  for i, step in enumerate(steps):
    code = subprocess.call(step)
    if code:
      return code
    if i == 0 and not args.reuse:
      wait_active(job.name, args.zone, args.project)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
