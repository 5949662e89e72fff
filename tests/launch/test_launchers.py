"""Launchers' dry runs (SLURM, GKE, TPU VM) and the SLURM environment path, with no cloud."""

import json
import os
import shlex
import socket
import subprocess

import pytest
import yaml

from vlpt.distributed import cluster_from_env, first_slurm_host

from conftest import PYTHON, REPO

CMD = ["--", "vlpt-train", "--config", "configs/demo.py", "--workdir", "/shared/runs/x"]


def dry(launcher, *args):
  out = subprocess.run(
    [PYTHON, os.path.join(REPO, "launch", launcher), *args, "--dry-run", *CMD],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_slurm_script_for_two_hosts(tmp_path):
  text = dry(
    "slurm.py",
    "--name",
    "clip",
    "--num_hosts",
    "2",
    "--gpus_per_node",
    "8",
    "--tasks_per_node",
    "8",
    "--env",
    "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
  )
  script = text.split("# would run:")[0]
  (tmp_path / "job.sbatch").write_text(script)
  assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0
  for line in (
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=8",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --requeue",
    "#SBATCH --signal=TERM@120",
    "export VLPT_COORDINATOR_PORT=8476",
    "export VLPT_ONE_DEVICE_PER_PROCESS=1",
    "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
  ):
    assert line in script.splitlines(), line
  srun = next(line for line in script.splitlines() if line.startswith("srun"))
  assert "--kill-on-bad-exit=1" in srun and srun.endswith(shlex.join(CMD[1:]))


def test_gke_manifest_for_two_gpu_hosts():
  spec = yaml.safe_load(
    dry(
      "gke.py",
      "--name",
      "clip",
      "--num_hosts",
      "2",
      "--image",
      "img:1",
      "--gpus_per_host",
      "8",
      "--port",
      "9999",
    )
  )
  assert spec["kind"] == "JobSet"
  job = spec["spec"]["replicatedJobs"][0]["template"]["spec"]
  assert job["parallelism"] == job["completions"] == 2 and job["completionMode"] == "Indexed"
  container = job["template"]["spec"]["containers"][0]
  env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
  assert env["VLPT_COORDINATOR"] == "clip-workers-0-0.clip:9999"
  assert env["VLPT_NUM_PROCESSES"] == "2"
  assert "job-completion-index" in json.dumps(env["VLPT_PROCESS_ID"])
  assert container["ports"][0]["containerPort"] == 9999
  assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
  assert container["command"] == CMD[1:]
  assert job["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_gke_manifest_for_tpu_uses_auto_detection():
  spec = yaml.safe_load(
    dry(
      "gke.py",
      "--name",
      "clip",
      "--num_hosts",
      "4",
      "--image",
      "img:1",
      "--accelerator",
      "tpu",
      "--tpu_topology",
      "4x4",
    )
  )
  pod = spec["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
  env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
  assert env == {"VLPT_DISTRIBUTED": "auto"}
  assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4"


def test_tpu_commands():
  lines = dry(
    "tpu.py", "--name", "clip", "--zone", "us-east5-b", "--accelerator_type", "v5litepod-16", "--spot"
  ).splitlines()
  assert lines[0].startswith("gcloud compute tpus queued-resources create clip")
  assert "--spot" in lines[0] and "--accelerator-type v5litepod-16" in lines[0]
  assert any(
    "--worker=all" in line and "VLPT_DISTRIBUTED=auto" in line and "vlpt-train" in line for line in lines
  )
  assert "--worker=0" in lines[-1] and "tail" in lines[-1]
  reuse = dry("tpu.py", "--name", "clip", "--zone", "z", "--reuse").splitlines()
  assert not any("queued-resources create" in line for line in reuse)


def test_bad_launcher_arguments_fail_clearly():
  out = subprocess.run(
    [PYTHON, os.path.join(REPO, "launch", "slurm.py"), "--name", "Bad_Name", "--dry-run", *CMD],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode != 0 and "--name" in out.stderr


def test_cluster_detection_from_environment():
  assert first_slurm_host("gpu[003-010,012],cpu1") == "gpu003"
  assert cluster_from_env({}) is None
  spec = cluster_from_env(
    {
      "SLURM_NTASKS": "4",
      "SLURM_PROCID": "3",
      "SLURM_JOB_ID": "17",
      "SLURM_STEP_NODELIST": "node[07-08]",
      "SLURM_LOCALID": "1",
      "VLPT_COORDINATOR_PORT": "1234",
      "VLPT_ONE_DEVICE_PER_PROCESS": "1",
    }
  )
  assert (spec.coordinator, spec.num_processes, spec.process_id, spec.local_device_ids) == (
    "node07:1234",
    4,
    3,
    (1,),
  )
  assert cluster_from_env({"VLPT_DISTRIBUTED": "auto"}).coordinator is None
  with pytest.raises(ValueError, match="VLPT_NUM_PROCESSES"):
    cluster_from_env({"VLPT_COORDINATOR": "h:1"})


PROBE = """
import jax
from jax.experimental import multihost_utils
from vlpt.distributed import initialize_from_env
assert initialize_from_env(timeout_s=60)
total = multihost_utils.process_allgather(jax.numpy.asarray(jax.process_index() + 1)).sum()
print("OK", jax.process_count(), jax.process_index(), jax.device_count(), int(total), flush=True)
"""


def test_two_processes_find_each_other_from_slurm_variables(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for rank in range(2):
    env = dict(
      os.environ,
      SLURM_NTASKS="2",
      SLURM_PROCID=str(rank),
      SLURM_LOCALID="0",
      SLURM_JOB_ID="4242",
      SLURM_STEP_NODELIST="localhost",
      VLPT_COORDINATOR_PORT=str(port),
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    for key in ("VLPT_COORDINATOR", "VLPT_NUM_PROCESSES", "VLPT_PROCESS_ID"):
      env.pop(key, None)
    log = open(tmp_path / f"p{rank}.log", "w")
    procs.append(
      (subprocess.Popen([PYTHON, "-c", PROBE], env=env, stdout=log, stderr=subprocess.STDOUT), log)
    )
  for proc, log in procs:
    assert proc.wait(timeout=120) == 0
    log.close()
  for rank in range(2):
    text = (tmp_path / f"p{rank}.log").read_text()
    assert f"OK 2 {rank} 4 3" in text, text
