"""Multi-process initialization from the environment a launcher provides.

``launch/local.py`` sets ``VLPT_COORDINATOR``, ``VLPT_NUM_PROCESSES`` and ``VLPT_PROCESS_ID``;
with none of them set this is a single-process run and nothing is initialized.
"""

from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "VLPT_COORDINATOR"
ENV_NUM_PROCESSES = "VLPT_NUM_PROCESSES"
ENV_PROCESS_ID = "VLPT_PROCESS_ID"


def initialize_from_env(timeout_s: int = 120) -> bool:
  """Calls ``jax.distributed.initialize`` when the launcher's variables are present."""
  coordinator = os.environ.get(ENV_COORDINATOR)
  if not coordinator:
    return False
  num = int(os.environ[ENV_NUM_PROCESSES])
  pid = int(os.environ[ENV_PROCESS_ID])
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid,
                             initialization_timeout=timeout_s)
  return True


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def set_host_device_count(count: int | None) -> None:
  """Simulates ``count`` CPU devices unless ``XLA_FLAGS`` already sets a count.

  Must run before JAX initializes its backends (before the first device query).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if count and DEVICE_COUNT_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={int(count)}".strip()
