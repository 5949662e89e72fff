#!/usr/bin/env python3
"""Submit a vlpt job to SLURM: writes an sbatch script and runs ``sbatch`` on it.

  python launch/slurm.py --name clip-b16 --num_hosts 4 --gpus_per_node 8 --time 48:00:00 \\
      --dry-run -- vlpt-train --config configs/demo.py --workdir /shared/runs/clip-b16

One process per node (``--tasks_per_node 1``, JAX sees the node's GPUs) or one per GPU
(``--tasks_per_node`` = GPUs; each process then sees one device). Processes find each other from
SLURM's variables (``vlpt.distributed``: first node of the step's node list, ``--port``).
Preemption and time limits: SLURM sends SIGTERM 120 s ahead (``--signal``), vlpt-train
checkpoints and exits, and ``--requeue`` restarts the job, which resumes from the workdir.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import Job, add_job_args, job_from_args, split_command  # noqa: E402


def sbatch_script(
  job: Job,
  *,
  gpus_per_node: int,
  tasks_per_node: int,
  time: str,
  partition: str | None,
  account: str | None,
  output: str,
  setup: str,
  requeue: bool,
  signal_lead_s: int,
) -> str:
  lines = [
    "#!/bin/bash",
    f"#SBATCH --job-name={job.name}",
    f"#SBATCH --nodes={job.num_hosts}",
    f"#SBATCH --ntasks-per-node={tasks_per_node}",
    f"#SBATCH --time={time}",
    f"#SBATCH --output={output}",
    f"#SBATCH --signal=TERM@{signal_lead_s}",
  ]
  if gpus_per_node:
    lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  if account:
    lines.append(f"#SBATCH --account={account}")
  if requeue:
    lines.append("#SBATCH --requeue")
  lines += ["", "set -euo pipefail"]
  if setup:
    lines.append(setup)
  lines += [f"export VLPT_COORDINATOR_PORT={job.port}"]
  if tasks_per_node > 1:
    lines.append("export VLPT_ONE_DEVICE_PER_PROCESS=1")
  if job.env:
    lines.append(job.exports())
  lines += [
    "",
    "# one task per process; a failed task ends the step (no hung peers)",
    f"srun --kill-on-bad-exit=1 --ntasks-per-node={tasks_per_node} {job.command_line}",
    "",
  ]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  opts, command = split_command(argv, "launch/slurm.py")
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_job_args(p)
  p.add_argument("--gpus_per_node", type=int, default=0)
  p.add_argument("--tasks_per_node", type=int, default=1, help="processes per node: 1, or one per GPU")
  p.add_argument("--time", default="24:00:00")
  p.add_argument("--partition", default=None)
  p.add_argument("--account", default=None)
  p.add_argument("--output", default="%x-%j.log")
  p.add_argument("--setup", default="", help="shell line run first (e.g. activate a venv)")
  p.add_argument("--no_requeue", action="store_true")
  p.add_argument("--signal_lead_s", type=int, default=120)
  args = p.parse_args(opts)
  job = job_from_args(args, command, "launch/slurm.py")
  if args.tasks_per_node < 1:
    sys.exit("launch/slurm.py: --tasks_per_node must be >= 1")
  script = sbatch_script(
    job,
    gpus_per_node=args.gpus_per_node,
    tasks_per_node=args.tasks_per_node,
    time=args.time,
    partition=args.partition,
    account=args.account,
    output=args.output,
    setup=args.setup,
    requeue=not args.no_requeue,
    signal_lead_s=args.signal_lead_s,
  )
  if args.dry_run:
    print(script, end="")
    print(f"# would run: sbatch {shlex.quote(job.name + '.sbatch')}")
    return 0
  with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix=job.name + "-", delete=False) as f:
    f.write(script)
  return subprocess.call(["sbatch", f.name])


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
