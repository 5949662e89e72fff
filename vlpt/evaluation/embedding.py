"""Sharded embedding of whole evaluation sets.

Every process holds the (small) evaluation set; each feeds its rows of every global batch, the
towers run sharded over the mesh, and the embeddings come back replicated, so every process can
compute metrics. The set is padded to a whole number of global batches and trimmed afterwards.
The embeddings stay on the devices until the whole set is embedded and come to the host in one
transfer, so the host queues batch after batch without waiting for any.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vlpt.data.loader import to_global


def embed_in_batches(
  fn: Callable[[jax.Array], jax.Array], data: np.ndarray, *, mesh: Mesh, global_batch: int
) -> np.ndarray:
  """Applies the jitted ``fn`` (global batch -> replicated embeddings) over ``data`` in order."""
  n = data.shape[0]
  pad = (-n) % global_batch
  if pad:
    data = np.concatenate([data, np.repeat(data[-1:], pad, axis=0)])
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch // pc
  outputs = []
  for start in range(0, data.shape[0], global_batch):
    rows = data[start + pi * local : start + (pi + 1) * local]
    batch = to_global({"x": rows}, mesh, pc)["x"]
    outputs.append(fn(batch))
  return fetch_rows(outputs, n)


def fetch_rows(arrays: list[jax.Array], n: int) -> np.ndarray:
  """Replicated per-batch device arrays -> their first ``n`` rows on the host, in one transfer."""
  return np.asarray(jax.device_get(jnp.concatenate(arrays)[:n]))
