"""Multi-process initialization from the environment a launcher provides.

Checked in this order (the first that applies wins):
1. explicit: ``VLPT_COORDINATOR`` (host:port), ``VLPT_NUM_PROCESSES``, ``VLPT_PROCESS_ID``
   (``launch/local.py``; GKE manifests from ``launch/gke.py``, where the process id comes from
   the Job's completion index);
2. SLURM: ``SLURM_NTASKS`` > 1 with ``SLURM_PROCID`` and a node list (``launch/slurm.py``): the
   coordinator is the first node of ``SLURM_STEP_NODELIST`` (or ``SLURM_JOB_NODELIST``) on
   ``VLPT_COORDINATOR_PORT`` (default: derived from the job id, as JAX does);
3. ``VLPT_DISTRIBUTED=auto``: ``jax.distributed.initialize()`` detects the cluster itself (TPU VM
   pods via their metadata server; ``launch/tpu.py`` sets it).
With none of them this is a single-process run and nothing is initialized.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax

ENV_COORDINATOR = "VLPT_COORDINATOR"
ENV_NUM_PROCESSES = "VLPT_NUM_PROCESSES"
ENV_PROCESS_ID = "VLPT_PROCESS_ID"
ENV_COORDINATOR_PORT = "VLPT_COORDINATOR_PORT"
ENV_AUTO = "VLPT_DISTRIBUTED"
ENV_DEVICE_PER_PROCESS = "VLPT_ONE_DEVICE_PER_PROCESS"


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """What ``jax.distributed.initialize`` needs; ``coordinator=None`` means auto-detection."""

  source: str
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def first_slurm_host(node_list: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-010,012],cpu1' -> 'gpu003'."""
  m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", node_list.strip())
  if not m:
    raise ValueError(f"cannot parse the SLURM node list {node_list!r}")
  prefix, ranges = m.group(1), m.group(2)
  if not ranges:
    return prefix
  return prefix + re.split(r"[,-]", ranges)[0]


def cluster_from_env(env: Mapping[str, str] | None = None) -> ClusterSpec | None:
  """The cluster this process belongs to, from its environment (see the module docstring)."""
  env = os.environ if env is None else env
  if env.get(ENV_COORDINATOR):
    try:
      return ClusterSpec(
        "explicit", env[ENV_COORDINATOR], int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
      )
    except KeyError as e:
      raise ValueError(f"{ENV_COORDINATOR} is set but {e.args[0]} is not") from None
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodes:
      raise ValueError(
        "SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST "
        "is set; run the training under srun"
      )
    port = env.get(ENV_COORDINATOR_PORT) or str(
      int(env.get("SLURM_JOB_ID", "0")) % 4096 + 65535 - 4096 + 1
    )
    local = None
    if env.get(ENV_DEVICE_PER_PROCESS) == "1":  # one process per GPU
      local = (int(env.get("SLURM_LOCALID", "0")),)
    return ClusterSpec(
      "slurm",
      f"{first_slurm_host(nodes)}:{port}",
      int(env["SLURM_NTASKS"]),
      int(env["SLURM_PROCID"]),
      local,
    )
  if env.get(ENV_AUTO) == "auto":
    return ClusterSpec("auto")
  return None


def initialize_from_env(timeout_s: int = 120) -> bool:
  """Calls ``jax.distributed.initialize`` for the cluster the environment describes, if any.

  Peers exchange heartbeats every few seconds; one missing for ``VLPT_HEARTBEAT_TIMEOUT_S``
  (default 30) ends every other process with an error instead of a hang.
  """
  spec = cluster_from_env()
  if spec is None:
    return False
  heartbeat = int(os.environ.get("VLPT_HEARTBEAT_TIMEOUT_S", "30"))
  if spec.coordinator is None:
    jax.distributed.initialize(initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat)
  else:
    jax.distributed.initialize(
      coordinator_address=spec.coordinator,
      num_processes=spec.num_processes,
      process_id=spec.process_id,
      local_device_ids=spec.local_device_ids,
      initialization_timeout=timeout_s,
      heartbeat_timeout_seconds=heartbeat,
    )
  return True


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


ACCELERATOR_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def cpu_unless_accelerator() -> None:
  """``JAX_PLATFORMS=cpu`` on a machine with no TPU or GPU device file (unless already set).

  libtpu (the ``tpu`` and ``test`` extras, for ``vlpt-plan``) makes JAX try a TPU first at every
  start: about 1.5 s and a screen of warnings on a CPU machine. Must run before JAX starts.
  """
  import glob

  if "JAX_PLATFORMS" not in os.environ and not any(glob.glob(p) for p in ACCELERATOR_DEVICE_FILES):
    os.environ["JAX_PLATFORMS"] = "cpu"  # for the processes this one starts
    jax.config.update("jax_platforms", "cpu")  # jax read the environment when it was imported


def set_host_device_count(count: int | None) -> None:
  """Simulates ``count`` CPU devices unless ``XLA_FLAGS`` already sets a count.

  Must run before JAX initializes its backends (before the first device query).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if count and DEVICE_COUNT_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={int(count)}".strip()
