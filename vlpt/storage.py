"""Paths that are local files or ``gs://`` objects: the one way vlpt touches a workdir, an export
or a shard set, so a pod's workers share one run on GCS instead of each writing its own disk.

Local paths are made absolute (``~`` expanded); ``gs://bucket/...`` stays as given (``os.path``
would turn it into ``$CWD/gs:/bucket``). Remote I/O goes through etils ``epath`` (gcsfs without
TensorFlow); orbax writes checkpoint arrays to the same URLs with tensorstore.

GCS objects are written whole and have no append and no atomic rename: :func:`write_text` /
:func:`write_bytes` replace a local file through a temporary file and ``os.replace`` (a kill never
leaves half a file under the final name), and upload an object in one request (an object is
visible complete or not at all). :func:`append_bytes` appends to an object by composing it with
an upload of the new bytes alone (GCS compose), so a log that grows all run long costs each write
its own size, not the object's.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator

from etils import epath

REMOTE_PREFIXES = ("gs://",)


def is_remote(path: str | os.PathLike) -> bool:
  return str(path).startswith(REMOTE_PREFIXES)


def resolve(path: str | os.PathLike) -> str:
  """An absolute local path, or the URL without a trailing slash."""
  path = str(path)
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(base: str | os.PathLike, *parts: str) -> str:
  base = str(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def split(path: str) -> tuple[str, str]:
  """(parent, name), as ``os.path.split`` after normalizing (``gs://b/x/`` -> ``gs://b``, ``x``)."""
  if is_remote(path):
    return posixpath.split(path.rstrip("/"))
  return os.path.split(os.path.normpath(path))


def basename(path: str) -> str:
  return split(path)[1]


def as_path(path: str | os.PathLike) -> epath.Path:
  return epath.Path(resolve(path))


def _fresh(path: str | os.PathLike) -> epath.Path:
  """``path``, with gcsfs's cached listings of it and its parents dropped: other processes (a
  pod's workers, a resumed run) write the same bucket, and a stale listing would hide their files
  or give an old size (a read cut short)."""
  p = as_path(path)
  fs = getattr(getattr(p, "_backend", None), "fs", None)
  if fs is not None:
    fs(str(p)).invalidate_cache(str(p))
  return p


def exists(path: str | os.PathLike) -> bool:
  return os.path.exists(path) if not is_remote(path) else _fresh(path).exists()


def isfile(path: str | os.PathLike) -> bool:
  return os.path.isfile(path) if not is_remote(path) else _fresh(path).is_file()


def isdir(path: str | os.PathLike) -> bool:
  """A local directory, or a ``gs://`` prefix that holds objects (GCS has no empty folders)."""
  return os.path.isdir(path) if not is_remote(path) else _fresh(path).is_dir()


def listdir(path: str | os.PathLike) -> list[str]:
  """The names directly under ``path``, sorted; [] when it does not exist."""
  if not is_remote(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  p = _fresh(path)
  return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def makedirs(path: str | os.PathLike) -> None:
  """Creates a local directory and its parents (nothing to create on GCS)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def check_writable(directory: str | os.PathLike) -> None:
  """An OSError naming ``directory`` and the likely fix when it cannot be written (a missing
  bucket, credentials without write access, a read-only disk), before a run does anything costly:
  a probe object is written and deleted (remote); the directory is created (local)."""
  directory = str(directory)
  if not is_remote(directory):
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise OSError(f"cannot create the directory {directory}: {e.strerror or e}") from None
    return
  bucket = directory.split("/")[2]
  probe = join(directory, f".vlpt-write-check-{uuid.uuid4().hex}")
  try:
    write_bytes(probe, b"")
    _fresh(probe).unlink()
  except Exception as e:  # (gcsfs raises FileNotFoundError, PermissionError, HttpError...)
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise OSError(
      f"cannot write to {directory} ({detail}); check that the bucket gs://{bucket} exists and "
      "that these credentials may create and delete objects in it (docs/operations.md)"
    ) from None


def read_text(path: str | os.PathLike) -> str:
  if not is_remote(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  return _fresh(path).read_text(encoding="utf-8")


def read_bytes(path: str | os.PathLike) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  return _fresh(path).read_bytes()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Replaces ``path`` whole: locally through ``path.tmp`` and a rename, remotely in one upload."""
  path = str(path)
  if is_remote(path):
    as_path(path).write_bytes(data)
    return
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_bytes(path: str | os.PathLike, data: bytes, *, exists_now: bool | None = None) -> None:
  """Appends ``data`` to ``path``, creating it if absent (``exists_now``: the caller knows whether
  it exists, which saves a request).

  Remotely the bytes go up as an object of their own beside ``path`` and a server-side compose
  makes ``path`` + that object the new ``path`` (the object is visible before or after the append,
  never in between; GCS composite objects: https://cloud.google.com/storage/docs/composite-objects),
  then the part is deleted; where the bucket cannot compose (zonal buckets), the object is read
  and written back whole.
  """
  path = str(path)
  if not is_remote(path):
    with open(path, "ab") as f:
      f.write(data)
    return
  if not (exists(path) if exists_now is None else exists_now):
    write_bytes(path, data)
    return
  part = f"{path}.append-{uuid.uuid4().hex[:12]}"
  write_bytes(part, data)
  try:
    _remote_fs(path).merge(resolve(path), [resolve(path), resolve(part)])
  except NotImplementedError:
    write_bytes(path, read_bytes(path) + data)
  finally:
    _fresh(part).unlink(missing_ok=True)


def upload(local: str, path: str | os.PathLike) -> None:
  """Copies the local file ``local`` to ``path`` (local or remote), replacing it whole."""
  if not is_remote(path):
    shutil.copyfile(local, path)
    return
  with open(local, "rb") as f:
    as_path(path).write_bytes(f.read())


def walk_files(path: str | os.PathLike) -> Iterator[str]:
  """The paths of every file under the directory ``path``, relative to it, in sorted order."""
  if not is_remote(path):
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        yield os.path.relpath(os.path.join(root, name), path)
    return
  root = as_path(path)
  for child in sorted(root.iterdir(), key=lambda c: c.name):
    if child.is_dir():
      for rel in walk_files(str(child)):
        yield posixpath.join(child.name, rel)
    else:
      yield child.name


def download(path: str, local: str) -> None:
  """Copies the file or directory tree ``path`` (local or remote) to the new local path ``local``."""
  if not isdir(path):
    os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
    with open(local, "wb") as f:
      f.write(read_bytes(path))
    return
  for rel in walk_files(path):
    target = os.path.join(local, *rel.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
      f.write(read_bytes(join(path, rel)))


def remove_tree(path: str | os.PathLike) -> None:
  """Deletes a file or directory tree (every object under the prefix); absent is fine."""
  if not is_remote(path):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
      os.remove(path)
    return
  p = as_path(path)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()


def _remote_fs(path: str):
  """The fsspec filesystem (gcsfs) behind a remote path: byte ranges and globs, which epath lacks."""
  return as_path(path)._backend.fs(str(path))


def file_size(path: str | os.PathLike) -> int:
  if not is_remote(path):
    return os.path.getsize(path)
  return int(_remote_fs(str(path)).size(resolve(path)))


def read_range(path: str | os.PathLike, offset: int, size: int) -> bytes:
  """``size`` bytes of ``path`` from ``offset`` (fewer at the end of the file): one ranged request
  on GCS, one ``pread`` locally (prefer a kept descriptor for many local reads)."""
  if not is_remote(path):
    with open(path, "rb") as f:
      return os.pread(f.fileno(), size, offset)
  return _remote_fs(str(path)).cat_file(resolve(path), start=offset, end=offset + size)


def open_read(path: str | os.PathLike, block_size: int = 8 << 20):
  """A binary file object for sequential reading (remotely with ``block_size`` reads ahead)."""
  if not is_remote(path):
    return open(path, "rb")
  return _remote_fs(str(path)).open(resolve(path), "rb", block_size=block_size)


def glob(pattern: str) -> list[str]:
  """Sorted paths matching a glob, local or ``gs://``."""
  if not is_remote(pattern):
    import glob as _glob

    return sorted(_glob.glob(pattern))
  return sorted("gs://" + p.removeprefix("gs://") for p in _remote_fs(pattern).glob(pattern))
