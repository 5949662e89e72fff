"""One description of a training job, shared by every launcher in ``launch/``.

A job is a name, a number of hosts, the command every host runs (``-- vlpt-train ...``), extra
environment variables and the coordinator port. Each launcher turns it into what its target
runs: an sbatch script (``slurm.py``), a JobSet manifest (``gke.py``), gcloud commands
(``tpu.py``). ``--dry-run`` prints exactly that and touches nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

DEFAULT_PORT = 8476  # the coordinator's gRPC port (JAX's usual choice)


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  num_hosts: int
  command: tuple[str, ...]
  env: tuple[tuple[str, str], ...] = ()
  port: int = DEFAULT_PORT

  @property
  def command_line(self) -> str:
    return shlex.join(self.command)

  def exports(self) -> str:
    """``export K=V`` lines for the job's environment."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in self.env)


def split_command(argv: list[str], prog: str) -> tuple[list[str], list[str]]:
  if "--" not in argv:
    sys.exit(f"usage: {prog} [options] -- COMMAND ...  (e.g. -- vlpt-train --config ...)")
  i = argv.index("--")
  if not argv[i + 1 :]:
    sys.exit(f"{prog}: no command after --")
  return argv[:i], argv[i + 1 :]


def add_job_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--name", required=True, help="job name (letters, digits, '-')")
  parser.add_argument("--num_hosts", type=int, default=1, help="hosts (nodes / pod workers)")
  parser.add_argument(
    "--env",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="extra environment for every process (repeatable)",
  )
  parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="coordinator port")
  parser.add_argument(
    "--dry-run",
    "--dry_run",
    dest="dry_run",
    action="store_true",
    help="print what would be run or applied, and do nothing",
  )


def job_from_args(args: argparse.Namespace, command: list[str], prog: str) -> Job:
  import re

  if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", args.name):
    sys.exit(f"{prog}: --name {args.name!r} must be lower-case letters, digits and '-'")
  if args.num_hosts < 1:
    sys.exit(f"{prog}: --num_hosts must be >= 1")
  env = []
  for item in args.env:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      sys.exit(f"{prog}: --env expects KEY=VALUE, got {item!r}")
    env.append((key, value))
  return Job(args.name, args.num_hosts, tuple(command), tuple(env), args.port)
