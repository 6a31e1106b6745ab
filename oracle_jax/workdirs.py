"""A run's directory: one run at a time (a lock file), and the config of the run it holds.

`WORKDIR/run.lock` names the process that owns the workdir (host, pid, start time).
Two runs in one workdir would interleave their checkpoints and metrics, so a second run
stops at once, naming the first. The lock of a process that died without releasing it
(killed, out of memory) is taken over when that process was on this host and is gone.
Only process 0 of a multi-process run takes it; the other processes are the same run.
"""
import contextlib
import datetime
import json
import logging
import os
import socket
import time
import uuid

import jax

from oracle_jax import errors, fileio, methods

LOCK_NAME = 'run.lock'
# Keys that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = frozenset({'overwrite', 'log_every_steps', 'eval_batch_size', 'data_dir',
                               'checkpoint_every_steps', 'keep_checkpoints', 'tensorboard',
                               'reference_top1', 'compilation_cache_dir',
                               # gone from the configs (the offline default is launch/demo.py);
                               # runs that older versions started with them still resume
                               'demo', 'demo_seeds', 'demo_teacher_steps'})
# Keys added to the configs after runs were started without them, with the default such a
# run had: it resumes while the key keeps that value.
ADDED_KEYS = {'image_size': [], 'data_mean': [], 'data_std': [], 'eval_split': '',
              'augment': '', 'in_memory_gb': 4.0, 'init_checkpoint': ''}
# What a run writes into its workdir, deleted when `overwrite` discards an older run.
RUN_OUTPUTS = ('checkpoints', 'best', 'teacher', 'tensorboard', 'metrics.jsonl',
               'results.json')


class WorkdirBusyError(errors.UserError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def exclusive(workdir):
  """Holds `workdir`'s lock for the `with` body (process 0 only); creates `workdir`."""
  workdir = fileio.path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise _not_writable(workdir, e) from None
  if jax.process_index() != 0:
    yield
    return
  lock = workdir / LOCK_NAME
  mine = _acquire(lock)
  try:
    yield
  finally:
    if _read_holder(lock) == mine:  # never remove a lock that someone took over
      lock.unlink()


def _acquire(lock):
  mine = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          'token': uuid.uuid4().hex}
  for _ in range(3):  # the lock may be released or taken over while we look at it
    if _create(lock, mine):
      return mine
    holder = _read_holder(lock)
    if holder is None:  # released meanwhile, or still being written: look again
      time.sleep(0.2)
      continue
    if not _is_dead_local(holder):
      raise WorkdirBusyError(
          f'Workdir {str(lock.parent)!r} is in use by the run of process {holder["pid"]} on '
          f'host {holder["host"]} (started {holder.get("started", "?")}). Wait for it to '
          f'finish or stop it, or use another --workdir; if no run uses this workdir, '
          f'delete {str(lock)!r}.')
    logging.warning('Taking over the lock %s of process %s on %s, which no longer runs.',
                    lock, holder['pid'], holder['host'])
    _remove_stale(lock, holder)
  raise WorkdirBusyError(f'Could not take the lock {str(lock)!r}: it names no owner, or '
                         'other runs keep taking it. If no run uses this workdir, delete it.')


def _create(lock, mine):
  """Creates `lock` holding `mine` if it does not exist; False if it does."""
  text = json.dumps(mine)
  if _is_local(lock):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    except OSError as e:
      raise _not_writable(lock.parent, e) from None
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True
  # Object stores have no exclusive create: write, then read back who won a race.
  if lock.exists():
    return False
  try:
    lock.write_text(text)
  except OSError as e:
    raise _not_writable(lock.parent, e) from None
  return _read_holder(lock) == mine


def _read_holder(lock):
  """The holder a lock file names, or None if there is none (or it is half-written)."""
  try:
    holder = json.loads(lock.read_text())
  except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
    return None
  return holder if isinstance(holder, dict) and {'host', 'pid'} <= set(holder) else None


def _is_dead_local(holder):
  if holder['host'] != socket.gethostname():
    return False  # another machine's process cannot be checked from here
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # alive, owned by another user
    return False
  return False


def _remove_stale(lock, holder):
  """Removes `lock` if it still names `holder` (not a lock taken over meanwhile)."""
  aside = lock.parent / f'.{lock.name}.stale-{uuid.uuid4().hex[:12]}'
  try:
    lock.rename(aside)
  except FileNotFoundError:
    return
  if _read_holder(aside) != holder and _is_local(lock):
    try:  # a fresh lock was moved: put it back unless yet another run took the place
      os.link(aside, lock)
    except FileExistsError:
      pass
  aside.unlink()


def _is_local(path):
  return '://' not in str(path)


def _not_writable(workdir, e):
  return errors.ConfigError(f'Workdir {str(workdir)!r} is not writable '
                            f'({getattr(e, "strerror", None) or e}); pass a --workdir you '
                            'can write to.')


def prepare(config, workdir):
  """Checks that the run `workdir` holds is this config's (resumable), or discards it if
  `config.overwrite`; then records the config. Call it holding the lock."""
  if jax.process_index() != 0:  # process 0 checks and writes; the others follow it
    return
  path = workdir / 'config.json'
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = {**{k: v for k, v in ADDED_KEYS.items() if k in current},
             **fileio.read_json(path, 'config of the run in this workdir')}
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed and not config.overwrite:
      raise errors.ConfigError(
          f'Workdir {str(workdir)!r} holds a run of a different config (differs in: '
          f'{", ".join(changed)}). Use another --workdir, or pass --config.overwrite=True '
          'to discard that run.')
    if changed:
      _discard_run(config, workdir)
  fileio.write_json(path, current, sort_keys=True)


def _discard_run(config, workdir):
  outputs = [workdir / name for name in RUN_OUTPUTS]
  for what, key, source in _models_read(config):
    path = fileio.path(source)
    path = path / 'teacher' if (path / 'teacher').is_dir() else path  # a run's workdir
    if any(path == o or o in path.parents for o in outputs):
      raise errors.ConfigError(
          f'overwrite=True would delete {str(path)!r}, the {what} this run reads '
          f'({key}={source!r}). Copy it out of {str(workdir)!r} first, or use another '
          '--workdir.')
  for old in outputs:
    if old.is_dir():
      old.rmtree()
    elif old.exists():
      old.unlink()


def _models_read(config):
  """`(what, key, value)` of each model checkpoint path the run reads: its teacher's and
  its `init_checkpoint` (zoo names are no paths in the workdir)."""
  sources = [('teacher', 'teacher.checkpoint',
              config.teacher.checkpoint if methods.is_distilled(config) else ''),
             ('init_checkpoint', 'init_checkpoint', config.get('init_checkpoint', ''))]
  return [s for s in sources if s[2] and not s[2].startswith('zoo:')]
