"""launch/tpu.py quotes every value it puts into a remote shell command: a remote_dir, a log path
or an --env value holding a space and a ';' reaches the remote shell as one word, and a leading
``~/`` still expands to the remote home."""

import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = ["vlpt-train", "--config", "configs/demo.py", "--workdir", "/runs/a b;c"]


def dry_run(*args):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "tpu.py"),
      "--name",
      "clip",
      "--zone",
      "z",
      "--reuse",
      *args,
      "--dry-run",
      "--",
      *COMMAND,
    ],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()]


def remote(argv):
  return argv[argv.index("--command") + 1]


def run_in_bash(command, home, cwd):
  """The remote command in a real bash whose cd/pip/nohup/tail only print their arguments."""
  stubs = "".join(
    f'{name}() {{ printf "{name}:%s\\n" "$@"; }}; ' for name in ("cd", "pip", "nohup", "tail")
  )
  out = subprocess.run(
    ["bash", "-c", stubs + command + "\nwait"],
    capture_output=True,
    text=True,
    env={"HOME": str(home), "PATH": os.environ["PATH"]},
    cwd=cwd,
    timeout=60,
  )
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


def test_paths_with_a_space_and_a_semicolon_stay_one_argument(tmp_path):
  remote_dir = "/srv/my dir;touch pwned"
  log = "~/logs/run 1;touch pwned.log"
  scp, install, run, tail = dry_run("--remote_dir", remote_dir, "--log", log, "--env", "NOTE=a b;c")
  assert scp[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "--worker=all", REPO]
  assert scp[8] == f"clip:{remote_dir}"  # an argument, not a shell command
  assert shlex.split(remote(install)) == ["cd", remote_dir, "&&", "pip", "install", "-q", "-e", ".[tpu]"]
  assert shlex.split(remote(run)) == [
    "cd",
    remote_dir,
    "&&",
    "VLPT_DISTRIBUTED=auto",
    "NOTE=a b;c",
    "nohup",
    *COMMAND,
    ">",
    log,
    "2>&1",
    "&",
  ]
  assert shlex.split(remote(tail)) == ["tail", "-n", "+1", "-F", log]
  assert "--worker=0" in tail and all("--worker=all" in step for step in (install, run))

  # a real shell agrees: one argument each, '~/' expanded, nothing injected
  home = tmp_path / "home"
  (home / "logs").mkdir(parents=True)
  expanded_log = home / "logs" / "run 1;touch pwned.log"
  assert run_in_bash(remote(install), home, tmp_path) == [
    f"cd:{remote_dir}",
    "pip:install",
    "pip:-q",
    "pip:-e",
    "pip:.[tpu]",
  ]
  assert run_in_bash(remote(run), home, tmp_path) == [f"cd:{remote_dir}"]
  assert expanded_log.read_text().splitlines() == [f"nohup:{arg}" for arg in COMMAND]
  assert run_in_bash(remote(tail), home, tmp_path) == [
    "tail:-n",
    "tail:+1",
    "tail:-F",
    f"tail:{expanded_log}",
  ]
  assert not list(tmp_path.glob("pwned*")) and not list(home.glob("pwned*"))


def test_default_paths_still_expand_to_the_remote_home(tmp_path):
  _, install, run, tail = dry_run()
  assert remote(install).startswith("cd ~/vlpt &&")
  assert run_in_bash(remote(install), tmp_path, tmp_path)[0] == f"cd:{tmp_path}/vlpt"
  assert shlex.split(remote(run))[-3:] == ["~/vlpt-train.log", "2>&1", "&"]
  assert run_in_bash(remote(tail), tmp_path, tmp_path)[-1] == f"tail:{tmp_path}/vlpt-train.log"
