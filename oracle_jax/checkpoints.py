"""Orbax checkpoints: model checkpoints (teachers) and training checkpoints (resume).

A *model checkpoint* is an orbax CheckpointManager directory with two items:
`variables` ({'params', 'batch_stats'}) and `meta` (JSON: model, num_classes, …). It is
what `torch_import` writes and what a `scratch` run keeps in WORKDIR/teacher; `teachers`
loads either as a frozen teacher.
"""
import logging
import time

import jax
import orbax.checkpoint as ocp

from oracle_jax import errors, fileio

# tensorstore reports every failure as a ValueError led by its status code; these codes
# mean the storage could not be reached, not that the checkpoint is damaged.
_TRANSIENT_CODES = ('PERMISSION_DENIED', 'UNAVAILABLE', 'DEADLINE_EXCEEDED',
                    'RESOURCE_EXHAUSTED', 'ABORTED', 'CANCELLED', 'UNAUTHENTICATED')


class CheckpointSaveError(errors.UserError, OSError):
  """Writing a training checkpoint failed (e.g. disk full); earlier steps are intact."""


class TeacherCheckpointError(errors.UserError, ValueError):
  """A teacher checkpoint that does not fit the configured teacher."""




class CheckpointReadError(errors.UserError, OSError):
  """A training checkpoint that could not be read for a reason other than damage."""


class UnreadableCheckpointsError(errors.UserError, RuntimeError):
  """Training checkpoints exist but none of them can be read."""


def save_model(directory, variables, step: int = 0, **meta):
  """Writes a model checkpoint into `directory`, replacing the one it holds.

  Orbax skips a step that is not newer than the newest saved, so an older model would
  survive under the new one's name: the new model goes to the next free step, and
  `max_to_keep=1` removes the old one only once the new one is complete. `step` is kept
  in `meta['step']`.
  """
  directory = fileio.path(directory)
  _check_is_model_directory(directory)
  options = ocp.CheckpointManagerOptions(create=True, max_to_keep=1)
  with ocp.CheckpointManager(directory, options=options) as manager:
    latest = manager.latest_step()
    slot = step if latest is None or step > latest else latest + 1
    saved = manager.save(slot, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave({**meta, 'step': step})))
    manager.wait_until_finished()
  if not saved:
    raise RuntimeError(f'orbax did not save step {slot} into {str(directory)!r}.')


def _check_is_model_directory(directory):
  """Refuses a directory holding anything but orbax steps: replacing the model in it
  deletes the old steps, which must never be someone else's files."""
  if not directory.exists():
    return
  foreign = [p.name for p in directory.iterdir()
             if not (p.name.isdigit() or '.orbax-checkpoint-tmp' in p.name)]
  if foreign or not directory.is_dir():
    raise errors.UserError(
        f'{str(directory)!r} is not a model checkpoint directory (it holds '
        f'{foreign[0] if foreign else "a file"!r}); write the model to a new or empty '
        'directory.')


def load_model(directory):
  """Returns `(variables, meta)` of the newest step of a model checkpoint directory."""
  directory = fileio.path(directory)
  if not directory.is_dir():
    raise errors.CheckpointNotFoundError(
        f'Model checkpoint directory {str(directory)!r} does not exist.')
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise TeacherCheckpointError(
          f'{directory!r} holds no orbax checkpoint. Point teacher.checkpoint at a directory '
          'written by a scratch run (WORKDIR/teacher) or by `python -m oracle_jax.torch_import`, '
          'or at a .pth file.')
    restored = manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return restored['variables'], restored['meta']


def _state_tree(state):
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'distiller_params': state.distiller_params, 'opt_state': state.opt_state}


class TrainCheckpoints:
  """Periodic training checkpoints for automatic resume.

  Orbax writes each step into a temporary directory and renames it when complete, so a
  kill during a save leaves the previous step intact. On restore, a damaged step
  (truncated, garbled or missing files) is moved aside as `<step>.unreadable-<time>`,
  kept for inspection, and the one before is used; the run later saves that step afresh.
  Any other failure to read (permissions, an unreachable bucket) stops the run and
  moves nothing. Steps that exist but are all damaged are an error, never a silent
  fresh start.
  """

  def __init__(self, directory, keep: int = 2):
    # Synchronous saves: a failed save (e.g. disk full) surfaces at its own step, and no
    # two orbax saves are ever in flight (concurrent async saves collided in testing).
    # The state of these models writes in well under a second.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(fileio.path(directory), options=options)

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, state, meta):
    previous = self._manager.latest_step()
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_state_tree(state)), meta=ocp.args.JsonSave(meta)),
                         force=True)
    except OSError as e:
      raise CheckpointSaveError(
          f'Saving checkpoint step {step} failed ({e.strerror or e}); the previous checkpoint '
          f'(step {previous}) is intact. Free disk space and rerun the same command to '
          'resume from it.') from e

  def restore_latest(self, state):
    """Returns `(state, meta)` from the newest readable step, or the inputs' if none."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
    damaged = []
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
      except (ValueError, KeyError, FileNotFoundError) as e:
        if _is_transient(e):
          raise self._read_error(step, e) from e
        logging.warning('Checkpoint step %d in %s is unreadable (%s: %s); trying the '
                        'previous one.', step, self._manager.directory, type(e).__name__,
                        _first_line(e))
        damaged.append(step)
        continue
      except OSError as e:
        raise self._read_error(step, e) from e
      # Only with a step to resume from: moved-aside steps would let a rerun start afresh.
      self._move_aside(damaged)
      return state.replace(**restored['state']), dict(restored['meta'] or {})
    if steps:
      raise UnreadableCheckpointsError(
          f'No readable checkpoint among steps {steps} in {str(self._manager.directory)!r}; '
          'refusing to start from scratch. Move the directory away to start over.')
    return state, {}

  def _move_aside(self, steps):
    """Renames damaged steps out of orbax's sight (kept for inspection), so that the
    resumed run can save them again."""
    if not steps:
      return
    directory = self._manager.directory
    suffix = f'unreadable-{time.strftime("%Y%m%dT%H%M%S")}'
    if jax.process_index() == 0:
      for step in steps:
        (directory / str(step)).rename(directory / f'{step}.{suffix}')
        logging.warning('Moved the unreadable checkpoint step %d to %s.', step,
                        directory / f'{step}.{suffix}')
    ocp.multihost.sync_global_processes('move_aside_unreadable_checkpoints')
    self._manager.reload()

  def _read_error(self, step, error):
    return CheckpointReadError(
        f'Reading checkpoint step {step} in {str(self._manager.directory)!r} failed '
        f'({_first_line(error)}); nothing was moved or deleted. Fix the access problem and '
        'rerun the same command to resume.')

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _is_transient(error):
  return isinstance(error, ValueError) and str(error).startswith(_TRANSIENT_CODES)


def _first_line(error):
  return str(error).splitlines()[0] if str(error) else type(error).__name__
