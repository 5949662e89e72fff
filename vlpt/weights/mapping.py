"""A declarative, two-way key/layout mapping between vlpt parameters and external checkpoints.

Each :class:`Rule` ties one or more external tensors to one or more vlpt arrays with a pair of
inverse transforms, so every format is described once and converts both ways. Conversions check
that every tensor on either side is used exactly once: a checkpoint with unexpected or missing
tensors is refused with their names, never half-loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from vlpt.errors import WeightsError

Arrays = list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  ext: tuple[str, ...]
  ours: tuple[str, ...]
  to_ours: Callable[[Arrays], Arrays]
  to_ext: Callable[[Arrays], Arrays]


def rule(
  ext: str | Sequence[str],
  ours: str | Sequence[str],
  transform: tuple[Callable[[Arrays], Arrays], Callable[[Arrays], Arrays]] | None = None,
) -> Rule:
  ext = (ext,) if isinstance(ext, str) else tuple(ext)
  ours = (ours,) if isinstance(ours, str) else tuple(ours)
  fwd, bwd = transform or IDENTITY
  return Rule(ext, ours, fwd, bwd)


def _one(f):
  return lambda arrays: [f(arrays[0])]


# ---- transforms: (external -> vlpt, vlpt -> external) ----------------------------------------
IDENTITY = (lambda a: list(a), lambda a: list(a))
# torch nn.Linear weight (out, in) <-> kernel (in, out)
LINEAR = (_one(lambda w: w.T), _one(lambda k: k.T))
# a conv patch embedding (W, C, p, p) <-> (p, p, C, W), the layout of row-major patches
CONV = (_one(lambda w: w.transpose(2, 3, 1, 0)), _one(lambda k: k.transpose(3, 2, 0, 1)))


def scalar(ext_shape: tuple[int, ...]):
  """A 0-d vlpt scalar stored with ``ext_shape`` (e.g. (1,)) outside."""
  return (_one(lambda a: np.asarray(a).reshape(())), _one(lambda a: np.asarray(a).reshape(ext_shape)))


def reshape(ext_shape: tuple[int, ...], our_shape: tuple[int, ...]):
  return (_one(lambda a: a.reshape(our_shape)), _one(lambda a: a.reshape(ext_shape)))


def heads_in(heads: int):
  """torch (H*D, in) projection <-> vlpt (in, H, D)."""
  return (
    _one(lambda w: w.T.reshape(w.shape[1], heads, -1)),
    _one(lambda k: k.reshape(k.shape[0], -1).T),
  )


def heads_bias(heads: int):
  return (_one(lambda b: b.reshape(heads, -1)), _one(lambda b: b.reshape(-1)))


def heads_out(heads: int):
  """torch out_proj (out, H*D) <-> vlpt (H, D, out)."""
  return (
    _one(lambda w: w.T.reshape(heads, -1, w.shape[0])),
    _one(lambda k: k.reshape(-1, k.shape[-1]).T),
  )


def packed_in_proj(heads: int):
  """torch MultiheadAttention in_proj_weight (3W, in) = [Wq; Wk; Wv] <-> three (in, H, D)."""
  fwd_one, bwd_one = heads_in(heads)
  return (
    lambda a: [fwd_one([w])[0] for w in np.split(a[0], 3, axis=0)],
    lambda a: [np.concatenate([bwd_one([k])[0] for k in a], axis=0)],
  )


def packed_in_bias(heads: int):
  return (
    lambda a: [b.reshape(heads, -1) for b in np.split(a[0], 3)],
    lambda a: [np.concatenate([b.reshape(-1) for b in a])],
  )


# ---- the engine -----------------------------------------------------------------------------
def _check_used(kind: str, available: Iterable[str], used: set[str]) -> None:
  extra = sorted(set(available) - used)
  if extra:
    shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
    raise WeightsError(f"{len(extra)} {kind} tensor(s) have no place in the model: {shown}")


def _gather(source: dict[str, np.ndarray], keys: tuple[str, ...], kind: str) -> Arrays:
  missing = [k for k in keys if k not in source]
  if missing:
    raise WeightsError(f"{kind} tensor(s) missing: {', '.join(missing)}")
  return [np.asarray(source[k]) for k in keys]


def apply_rules(
  source: dict[str, np.ndarray],
  rules: Sequence[Rule],
  *,
  to_ours: bool,
  ignore: Callable[[str], bool] = lambda _: False,
) -> dict[str, np.ndarray]:
  """Converts every tensor of ``source`` by ``rules`` (in the given direction), strictly."""
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()
  for r in rules:
    src_keys, dst_keys = (r.ext, r.ours) if to_ours else (r.ours, r.ext)
    arrays = _gather(source, src_keys, "checkpoint" if to_ours else "vlpt")
    converted = (r.to_ours if to_ours else r.to_ext)(arrays)
    used.update(src_keys)
    out.update(zip(dst_keys, converted))
  _check_used("checkpoint" if to_ours else "vlpt", (k for k in source if not ignore(k)), used)
  return out


def check_shapes(expected: dict[str, tuple[int, ...]], got: dict[str, np.ndarray]) -> None:
  """Every vlpt array present with the model's shape (mismatches are listed)."""
  missing = sorted(set(expected) - set(got))
  if missing:
    raise WeightsError(f"the checkpoint lacks {len(missing)} parameter(s): {', '.join(missing[:8])}")
  bad = [
    f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k])}"
    for k in expected
    if tuple(got[k].shape) != tuple(expected[k])
  ]
  if bad:
    raise WeightsError("shape mismatch: " + "; ".join(bad[:6]))
