"""Reading and writing tensor files without executing pickled code.

safetensors and ``.npz`` (``allow_pickle=False``) need no torch; ``.bin`` / ``.pt`` / ``.pth``
go through ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects from torch
2.6 on; before 2.6 that guard can be bypassed (CVE-2025-32434), so older torch is refused.
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from vlpt.weights.mapping import WeightsError

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
SAFE_TORCH = (2, 6, 0)  # first release whose torch.load(weights_only=True) is safe (CVE-2025-32434)


def _check_torch_version(path: str, version: str) -> None:
  """Refuses torch releases (and pre-releases) before 2.6: their weights_only unpickler can be
  made to run code from a crafted file."""
  m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?\.?(a|b|rc|dev)?", str(version))
  release = (int(m[1]), int(m[2]), int(m[3] or 0)) if m else (0, 0, 0)
  if release < SAFE_TORCH or (release == SAFE_TORCH and m[4]):  # 2.6.0a0, 2.6.0.dev: pre-releases
    raise WeightsError(
      f"{path}: torch {version} cannot read .bin/.pt files safely "
      "(torch.load(weights_only=True) is bypassable before torch 2.6, "
      "CVE-2025-32434); convert the file to safetensors or upgrade torch to >= 2.6"
    )


def _to_numpy_torch(t) -> np.ndarray:
  import torch

  if t.dtype in (torch.bfloat16, torch.float16):
    t = t.float()
  return t.detach().cpu().numpy()


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  out = {}
  try:
    with safe_open(path, framework="numpy") as f:
      for key in f.keys():
        out[key] = f.get_tensor(key)
  except (TypeError, ValueError):  # bfloat16 has no numpy dtype without ml_dtypes support
    with safe_open(path, framework="flax") as f:
      for key in f.keys():
        out[key] = np.asarray(f.get_tensor(key), np.float32)
  return out


def read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise WeightsError(
      f"{path}: reading .bin/.pt files needs torch (pip install torch), or "
      "convert the file to safetensors"
    ) from e
  _check_torch_version(path, torch.__version__)
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      if any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()):
        raise WeightsError(
          f"{path} is a TorchScript archive (e.g. OpenAI's original release); "
          "use its open_clip or HF safetensors export instead"
        )
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, ...
    raise WeightsError(
      f"{path}: not a plain tensor checkpoint ({type(e).__name__}: "
      f"{str(e).splitlines()[0][:200]}); vlpt never unpickles arbitrary code"
    ) from e
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]  # open_clip training checkpoints
  if not isinstance(obj, dict):
    raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
  return {k: _to_numpy_torch(v) for k, v in obj.items() if hasattr(v, "detach")}


def read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except ValueError as e:
    raise WeightsError(f"{path}: the .npz holds pickled objects, which vlpt does not load") from e


def read_tensors(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise WeightsError(f"no such checkpoint file: {path}")
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith(".npz"):
    return read_npz(path)
  if path.endswith(TORCH_SUFFIXES):
    return read_torch(path)
  raise WeightsError(
    f"{path}: unknown checkpoint file type (expected .safetensors, .npz, .bin, .pt or .pth)"
  )


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
  """Atomic write: a crash never leaves a truncated file under the final name."""
  from safetensors.numpy import save_file

  tmp = path + ".tmp"
  # (np.ascontiguousarray would turn 0-d scalars such as logit_scale into shape (1,))
  arrays = {k: np.array(v, order="C", copy=True) for k, v in tensors.items()}
  save_file(arrays, tmp, metadata=metadata)
  # safetensors creates the file private (0600); an export is an ordinary file: 0666 less umask
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  os.replace(tmp, path)
