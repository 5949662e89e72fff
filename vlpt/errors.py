"""Every error vlpt raises on purpose, in one leaf module (it imports nothing).

Any layer raises these without importing another layer. The command-line boundary
(``vlpt.cli.common``) prints them as one ``vlpt: error: ...`` line: a :class:`ConfigError`
exits 2 before anything compiles, a :class:`TrainingError` (and so a :class:`DataError`) exits 1.
"""


class VlptError(Exception):
  """Base of the errors below: a problem the user can act on, printed without a traceback."""


class ConfigError(VlptError, ValueError):
  """A configuration (or command line) a user can fix; found before anything compiles."""


class WeightsError(VlptError, ValueError):
  """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class TrainingError(VlptError, RuntimeError):
  """A run that must stop (e.g. repeated non-finite steps); the last checkpoint is intact."""


class DataError(TrainingError):
  """Data too broken to train on (e.g. more bad examples than config.data.max_bad_fraction)."""
