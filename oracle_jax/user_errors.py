"""The errors that mean "the user asked for something that cannot work": the command line
prints their one-sentence message instead of a traceback."""
from oracle_jax import checkpoints, errors, metrics_io, torch_import, validation
from oracle_jax.data import DatasetNotFoundError

USER_ERRORS = (errors.UserError, validation.ConfigError, checkpoints.CheckpointSaveError, DatasetNotFoundError, checkpoints.TeacherCheckpointError,
               torch_import.CheckpointMismatchError, metrics_io.NonFiniteLossError,
               FileNotFoundError, ValueError)
