"""Errors that mean "the input is wrong", not "the code is wrong".

`main.py` prints their message (which names the config field or file and the fix) without a
traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with what the user asked for: a config field, a data set, a file, a checkpoint."""


class ConfigError(UserError, ValueError):
  """A configuration field has a value the library cannot use."""


class DataError(UserError, ValueError):
  """A data set, split or image folder cannot be used as configured."""


class MissingFileError(UserError, FileNotFoundError):
  """A data set, weights or statistics file that the config points at is not there."""


class CheckpointError(UserError, RuntimeError):
  """A requested checkpoint is missing or cannot be restored."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training produced a NaN/Inf loss or gradient norm (stopped before a checkpoint)."""


USER_ERRORS = (UserError,)
