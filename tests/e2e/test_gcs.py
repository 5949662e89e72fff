"""Workdirs, exports and shards on ``gs://`` (a GCS emulator on loopback), through the CLIs as a
user types them: the bucket holds the run (checkpoints, metrics.jsonl, TensorBoard, records), a
run killed with SIGKILL resumes from it bitwise, ``vlpt-eval``, ``vlpt.load`` and
``vlpt-convert`` read it, and nothing lands in a local ``gs:`` folder."""

import os
import signal
import subprocess
import tarfile
import time

import numpy as np
import pytest

from vlpt import storage
from vlpt.train.writers import METRICS_FILE, read_rows

from conftest import PYTHON
from e2e_utils import (
  cli,
  env_with_devices,
  run,
  same_topology_reference,
  train_losses,
)


def _rows(workdir):
  return read_rows(storage.join(workdir, METRICS_FILE))


def _losses(workdir):
  """step -> train/loss; asserts each step was logged once."""
  steps = [r["step"] for r in _rows(workdir) if "train/loss" in r]
  assert steps == sorted(set(steps)), "a step was logged twice"
  return {r["step"]: r["train/loss"] for r in _rows(workdir) if "train/loss" in r}


def _committed_steps(workdir):
  """Steps orbax finished writing (on GCS it marks them with commit_success.txt, no rename)."""
  directory = storage.join(workdir, "checkpoints")
  return sorted(
    int(d)
    for d in storage.listdir(directory)
    if d.isdigit() and storage.isfile(storage.join(directory, d, "commit_success.txt"))
  )


def _kill_after_checkpoint(command, env, workdir, min_step, cwd):
  """Starts training; SIGKILLs its whole process group (every worker, as a preempted pod) once a
  checkpoint of ``min_step`` or later is committed in the bucket."""
  log = os.path.join(cwd, "killed-run.txt")
  with open(log, "w") as out:
    proc = subprocess.Popen(
      command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if max(_committed_steps(workdir), default=0) >= min_step:
        break
      time.sleep(0.1)
    assert proc.poll() is None, open(log).read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  return proc


def _no_local_gs_folder(cwd):
  assert not os.path.exists(os.path.join(cwd, "gs:")), "a gs:// path was written as a local folder"


@pytest.fixture(scope="module")
def gcs_run(gcs_server, tmp_path_factory):
  """The tiny demo trained once into a bucket (``configs/demo.py:tiny`` as the shared local
  reference run, 8 devices); -> (workdir URL, the folder the command ran in)."""
  from conftest import cli_environment  # (after the server: its environment is inherited)

  cwd = tmp_path_factory.mktemp("gcs-cwd")
  workdir = f"gs://{gcs_server.bucket()}/run"
  run(cli("vlpt.cli.train", workdir), env_with_devices(cli_environment(), 8), cwd=cwd)
  return workdir, cwd


def test_training_in_a_bucket_equals_the_local_run(gcs_run, reference_run):
  """Every file of the run is in the bucket; its losses and checkpoint equal the local reference
  run's bitwise (vlpt.load reads both)."""
  import vlpt

  workdir, cwd = gcs_run
  reference = reference_run("short")
  assert _losses(workdir) == train_losses(reference)  # all 20 steps
  files = set(storage.walk_files(workdir))
  assert {"vlpt_config.json", "vlpt_run.json", METRICS_FILE} <= files
  assert {"checkpoints/10/commit_success.txt", "checkpoints/20/commit_success.txt"} <= files
  assert any(f.startswith("tensorboard/events.out.tfevents") for f in files)
  remote, local = vlpt.load(workdir), vlpt.load(str(reference))
  assert sorted(remote.bundle.params) == sorted(local.bundle.params)
  for key, value in local.bundle.params.items():
    np.testing.assert_array_equal(remote.bundle.params[key], value, err_msg=key)
  _no_local_gs_folder(cwd)


def test_eval_and_convert_read_a_workdir_in_a_bucket(gcs_run, gcs_bucket, cli_env, tmp_path):
  """vlpt-eval --workdir gs://... evaluates with the run's recorded config and appends to the
  bucket's metrics.jsonl; vlpt-convert exports the run into a bucket, which vlpt.load reads."""
  import vlpt

  workdir, _ = gcs_run
  env = env_with_devices(cli_env, 8)
  out = run([PYTHON, "-m", "vlpt.cli.eval", "--workdir", workdir], env, cwd=tmp_path)
  assert f"config: {workdir}/vlpt_config.json" in out.stderr
  trained, evaluated = [r for r in _rows(workdir) if "heldout/zeroshot/top1" in r]
  assert evaluated["step"] == trained["step"] == 20
  for key, value in trained.items():
    assert evaluated[key] == pytest.approx(value, abs=1e-6), key

  export = f"{gcs_bucket}/export"
  run([PYTHON, "-m", "vlpt.cli.convert", f"{workdir}/checkpoints/10", export], env, cwd=tmp_path)
  assert storage.listdir(export) == ["model.safetensors", "vlpt_model.json"]
  exported, source = vlpt.load(export), vlpt.load(f"{workdir}/checkpoints/10")
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_array_equal(exported.encode_image(images), source.encode_image(images))
  ids = source.tokenizer(["a photo of a red circle"])
  np.testing.assert_array_equal(exported.tokenizer(["a photo of a red circle"]), ids)
  refused = subprocess.run(
    [PYTHON, "-m", "vlpt.cli.convert", workdir, export], env=env, capture_output=True, text=True
  )
  assert refused.returncode == 2 and "is not empty" in refused.stderr
  _no_local_gs_folder(tmp_path)


def test_shards_written_to_a_bucket(gcs_bucket, cli_env, tmp_path):
  out = f"{gcs_bucket}/shards"
  command = [PYTHON, "-m", "vlpt.cli.data", "build", "--from", "synthetic", "--num", "20"]
  proc = run([*command, "--shard-size", "8", "--image-size", "16", "--out", out], cli_env, cwd=tmp_path)
  assert f"wds:{out}/{{00000..00002}}.tar" in proc.stdout
  assert storage.listdir(out) == ["00000.tar", "00001.tar", "00002.tar", "shards.txt"]
  assert storage.read_text(f"{out}/shards.txt").split() == ["00000.tar", "00001.tar", "00002.tar"]
  storage.download(out, str(tmp_path / "copy"))
  counts = []
  for i in range(3):
    with tarfile.open(tmp_path / "copy" / f"0000{i}.tar") as tf:
      counts.append(sum(n.endswith(".jpg") for n in tf.getnames()))
  assert counts == [8, 8, 4]
  _no_local_gs_folder(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_on_gcs_resumes_bitwise(gcs_bucket, cli_env, tmp_path, processes, reference_run):
  """A run in the bucket killed (every process at once) after a checkpoint restarts from it;
  the bucket's metrics.jsonl then holds each step once, with the losses of an uninterrupted run
  on local disk (of the same topology) bitwise."""
  env = env_with_devices(cli_env, 8)

  command_for, want = same_topology_reference(processes, reference_run, env, tmp_path)
  workdir = f"{gcs_bucket}/run"
  proc = _kill_after_checkpoint(command_for(workdir), env, workdir, 10, tmp_path)
  assert proc.returncode == -signal.SIGKILL
  resumed_from = max(_committed_steps(workdir))
  assert 10 <= resumed_from < 80, "the run finished before it could be killed"
  out = run(command_for(workdir), env, cwd=tmp_path).stdout
  assert f"resumed from {workdir}/checkpoints/{resumed_from}" in out
  got = _losses(workdir)
  assert sorted(got) == sorted(want) == list(range(1, 81))
  for step in range(resumed_from + 1, 81):
    assert got[step] == want[step], (step, got[step], want[step])  # bitwise
  assert set(storage.listdir(storage.join(workdir, "checkpoints", "80", "data"))) >= {
    f"process_{i}-of-{processes}.json" for i in range(processes)
  }
  _no_local_gs_folder(tmp_path)


def test_a_workdir_that_cannot_be_written_is_one_line(gcs_server, cli_env, tmp_path):
  """A missing bucket (or a read-only directory) stops vlpt-train before anything is built."""
  env = dict(cli_env, **{k: os.environ[k] for k in os.environ if k not in cli_env})
  proc = subprocess.run(
    cli("vlpt.cli.train", "gs://no-such-bucket-here/run"),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("vlpt: error: --workdir: cannot write to gs://no-such-bucket-here/run")
  assert "check that the bucket gs://no-such-bucket-here exists" in last
  assert "Traceback" not in proc.stderr and "parameters, mesh" not in proc.stdout
  _no_local_gs_folder(tmp_path)
  blocked = tmp_path / "a_file"  # (a file where the workdir's parent should be: even root fails)
  blocked.write_text("")
  proc = subprocess.run(
    cli("vlpt.cli.train", blocked / "run"), env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 2 and "--workdir: cannot create the directory" in proc.stderr
  assert "Traceback" not in proc.stderr
