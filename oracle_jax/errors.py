"""The one base class of "the user asked for something that cannot work".

The command lines print a `UserError` as one line (`error: …`) and exit non-zero; every
other exception is a bug or an environment failure and keeps its traceback. This module
imports nothing of the project, so every layer can raise its subclasses.
"""


class UserError(Exception):
  """A mistake in the user's input (config, flags, files); the message names the fix."""


class ConfigError(UserError, ValueError):
  """A configuration value that cannot work; the message names the key and the fix."""


class DataError(UserError, ValueError):
  """A dataset or data file that is malformed; the message names it and what is wrong."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """A checkpoint (an orbax directory, a .pth file) that is not where the user said."""
