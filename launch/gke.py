#!/usr/bin/env python3
"""A JobSet manifest for GKE (TPU or GPU node pools), applied with ``kubectl``.

  python launch/gke.py --name clip-b16 --num_hosts 4 --image IMAGE --accelerator gpu \\
      --gpus_per_host 8 --dry-run -- vlpt-train --config configs/demo.py --workdir gs://...

One indexed Job of ``--num_hosts`` pods (JobSet's headless service gives every pod a stable
name). GPU pods get the coordinator (pod 0) and their rank from the manifest
(``VLPT_COORDINATOR``, ``VLPT_PROCESS_ID`` = the Job completion index); TPU pods let JAX detect the
slice (``VLPT_DISTRIBUTED=auto``). Preemption: Kubernetes sends SIGTERM and waits
``--grace_s``; vlpt-train checkpoints and exits; JobSet restarts the set (``--max_restarts``) and
training resumes from the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from job import Job, add_job_args, job_from_args, split_command  # noqa: E402

COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def manifest(
  job: Job,
  *,
  image: str,
  accelerator: str,
  gpus_per_host: int,
  tpu_type: str,
  tpu_topology: str,
  tpu_chips_per_host: int,
  max_restarts: int,
  grace_s: int,
) -> dict:
  env = [{"name": k, "value": v} for k, v in job.env]
  if accelerator == "tpu":
    env.append({"name": "VLPT_DISTRIBUTED", "value": "auto"})
    selector = {
      "cloud.google.com/gke-tpu-accelerator": tpu_type,
      "cloud.google.com/gke-tpu-topology": tpu_topology,
    }
    limits = {"google.com/tpu": str(tpu_chips_per_host)}
  else:
    env += [
      {"name": "VLPT_COORDINATOR", "value": f"{job.name}-workers-0-0.{job.name}:{job.port}"},
      {"name": "VLPT_NUM_PROCESSES", "value": str(job.num_hosts)},
      {"name": "VLPT_PROCESS_ID", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
    ]
    selector = {}
    limits = {"nvidia.com/gpu": str(gpus_per_host)} if gpus_per_host else {}
  container = {
    "name": "vlpt",
    "image": image,
    "command": list(job.command),
    "env": env,
    "ports": [{"containerPort": job.port, "name": "coordinator"}],
    "resources": {"limits": limits},
  }
  pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace_s, "containers": [container]}
  if selector:
    pod["nodeSelector"] = selector
  return {
    "apiVersion": "jobset.x-k8s.io/v1alpha2",
    "kind": "JobSet",
    "metadata": {"name": job.name},
    "spec": {
      "failurePolicy": {"maxRestarts": max_restarts},
      "network": {"enableDNSHostnames": True},
      "replicatedJobs": [
        {
          "name": "workers",
          "replicas": 1,
          "template": {
            "spec": {
              "parallelism": job.num_hosts,
              "completions": job.num_hosts,
              "completionMode": "Indexed",
              "backoffLimit": 0,
              "template": {"spec": pod},
            }
          },
        }
      ],
    },
  }


def main(argv: list[str]) -> int:
  opts, command = split_command(argv, "launch/gke.py")
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_job_args(p)
  p.add_argument("--image", required=True, help="container image with vlpt installed")
  p.add_argument("--accelerator", choices=("gpu", "tpu"), default="gpu")
  p.add_argument("--gpus_per_host", type=int, default=8)
  p.add_argument("--tpu_type", default="tpu-v5-lite-podslice")
  p.add_argument("--tpu_topology", default="4x4")
  p.add_argument("--tpu_chips_per_host", type=int, default=4)
  p.add_argument("--max_restarts", type=int, default=100)
  p.add_argument("--grace_s", type=int, default=120)
  args = p.parse_args(opts)
  job = job_from_args(args, command, "launch/gke.py")
  spec = manifest(
    job,
    image=args.image,
    accelerator=args.accelerator,
    gpus_per_host=args.gpus_per_host,
    tpu_type=args.tpu_type,
    tpu_topology=args.tpu_topology,
    tpu_chips_per_host=args.tpu_chips_per_host,
    max_restarts=args.max_restarts,
    grace_s=args.grace_s,
  )
  text = json.dumps(spec, indent=2)  # JSON is YAML; kubectl reads either
  if args.dry_run:
    print(text)
    print("# would run: kubectl apply -f -", file=sys.stderr)
    return 0
  return subprocess.run(["kubectl", "apply", "-f", "-"], input=text, text=True).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
