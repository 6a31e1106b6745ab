"""No input loses a run: one-line user errors, range checks, the workdir lock, damaged
checkpoints moved aside, model checkpoints replaced (never skipped), overwrite that keeps
the teacher, and the offline default with the user's own teacher (issue 14, items 3-7)."""
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, digits_config, main_command, saved_steps

from configs import default as default_config
from oracle_jax import checkpoints, cli, data, demo, errors, fileio, metrics_io, models
from oracle_jax import teachers, torch_import, train, validation, workdirs


# --------------------------------------------------------------------- one-line errors

def test_command_line_mistakes_are_one_line_and_write_nothing(digits_data_dir, tmp_path):
  cases = {
      'unknown_key': (['--config.no_such_key=1'],
                      "--config.no_such_key: the config has no key 'no_such_key'"),
      'missing_config': (['--config=' + os.path.join(REPO, 'configs', 'missing.py')],
                         r"config file '.*configs/missing.py' .* does not exist"),
      'wrong_type': (['--config.batch_size=abc'], r"flag --config.batch_size=abc: invalid literal"),
      'inf_epochs': (['--config.train_steps=0', '--config.num_epochs=inf'],
                     r'num_epochs must be a number >= 0 and finite, got inf'),
      'negative_alpha': (['--config.alpha=-1'],
                         r'alpha must be a number >= 0 and finite, got -1.0'),
  }
  # Started together: each process spends its time importing.
  procs = {name: subprocess.Popen(main_command(tmp_path / name, digits_data_dir, *args),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (args, _) in cases.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    errors_printed = [line for line in err.splitlines() if line.startswith('error:')]
    assert proc.returncode == 1, (name, err[-2000:])
    assert len(errors_printed) == 1 and 'Traceback' not in err, (name, err[-2000:])
    assert re.search(cases[name][1], errors_printed[0]), errors_printed[0]
    assert not out and not (tmp_path / name).exists(), name


def test_bugs_keep_their_traceback(digits_data_dir, tmp_path, monkeypatch):
  """Only UserErrors become one line; a TypeError inside training propagates intact (and
  the workdir lock is released on the way out)."""
  def broken_step(self, state):
    raise TypeError('a tracing bug')
  monkeypatch.setattr(train.Run, 'jitted', broken_step)
  monkeypatch.setattr(sys, 'argv', ['main.py'])
  config = digits_config(digits_data_dir, method='scratch', train_steps=2)
  with pytest.raises(TypeError, match='a tracing bug'):
    cli.run(lambda argv: train.train_and_evaluate(config, str(tmp_path)))
  assert not (tmp_path / workdirs.LOCK_NAME).exists()
  def mistaken(argv):
    raise errors.ConfigError('a user mistake')
  with pytest.raises(SystemExit, match=r'^error: a user mistake$'):
    cli.run(mistaken)


def test_every_user_error_class_is_a_user_error():
  for cls in (validation.ConfigError, checkpoints.CheckpointSaveError,
              checkpoints.TeacherCheckpointError, errors.CheckpointNotFoundError,
              checkpoints.CheckpointReadError, checkpoints.UnreadableCheckpointsError,
              data.DatasetNotFoundError, metrics_io.NonFiniteLossError,
              torch_import.CheckpointMismatchError, fileio.UnreadableFileError,
              workdirs.WorkdirBusyError, errors.DataError):
    assert issubclass(cls, errors.UserError), cls
  assert issubclass(validation.ConfigError, ValueError)  # old bases kept for callers


# ------------------------------------------------------------------------- validation

@pytest.mark.parametrize('key, value, message', [
    ('num_epochs', float('inf'), r'num_epochs must be a number >= 0 and finite, got inf\.'),
    ('temperature', float('inf'), r'temperature must be a number > 0 and finite, got inf\.'),
    ('optimizer.learning_rate', float('inf'), r'optimizer.learning_rate must be a number > 0'),
    ('eval_batch_size', 0, r'eval_batch_size must be an integer >= 1, got 0\.'),
    ('alpha', -1.0, r'alpha must be a number >= 0 and finite, got -1.0\.'),
    ('ce_weight', -0.5, r'ce_weight must be a number >= 0'),
    ('label_smoothing', 5.0, r'label_smoothing must be a number in \[0, 1\), got 5.0\.'),
    ('train_examples', -5, r'train_examples must be an integer >= 0, got -5\.'),
    ('keep_checkpoints', 0, r'keep_checkpoints must be an integer >= 1, got 0\.'),
    ('checkpoint_every_steps', -1, r'checkpoint_every_steps must be an integer >= 0'),
    ('eval_every_epochs', float('nan'), r'eval_every_epochs must be a number >= 0 and finite'),
    ('optimizer.momentum', 1.5, r'optimizer.momentum must be a number in \[0, 1\)'),
    ('optimizer.weight_decay', -1e-4, r'optimizer.weight_decay must be a number >= 0'),
    ('schedule.decay_epochs', (150, -1), r'schedule.decay_epochs\[1\] must be a number >= 0'),
    ('schedule.warmup_epochs', float('inf'), r'schedule.warmup_epochs must be'),
    ('oracle.gamma', float('inf'), r'oracle.gamma must be a number >= 0 and finite, got inf'),
    ('distill.dkd_temperature', 0.0, r'distill.dkd_temperature must be a number > 0'),
    ('distill.sad_qk_dim', 0, r'distill.sad_qk_dim must be an integer >= 1'),
    ('schedule.name', 'linear', r"schedule.name must be one of \('step', 'cosine'\)"),
    ('optimizer.name', 'adam', r"optimizer.name must be one of \('sgd',\)"),
])
def test_every_numeric_key_is_range_checked(key, value, message):
  config = default_config.get_config()
  config.method = 'scratch'
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_config(config)


def test_every_range_key_exists_in_the_base_config():
  config = default_config.get_config()
  for key in validation.RANGES:
    node = config
    for part in key.split('.'):
      assert part in node, key
      node = node[part]
  validation.check_ranges(config)  # the shipped defaults pass


def test_tilde_is_expanded_in_every_path_key(digits_data_dir, digits_teacher_dir, tmp_path,
                                             monkeypatch):
  home = os.path.commonpath([digits_data_dir, digits_teacher_dir, tmp_path])
  monkeypatch.setenv('HOME', home)
  tilde = lambda p: '~/' + os.path.relpath(p, home)
  config = digits_config(tilde(digits_data_dir), method='kd', **{
      'teacher.checkpoint': tilde(digits_teacher_dir), 'teacher.model': 'resnet8'})
  _, teacher = train.prepare(config)  # reads the data and the teacher through `~`
  assert jax.tree.leaves(teacher)
  with workdirs.exclusive(tilde(tmp_path / 'run')):
    assert (tmp_path / 'run' / workdirs.LOCK_NAME).exists()


# ------------------------------------------------------------------------------- lock

def test_second_run_in_a_workdir_fails_naming_the_holder(digits_data_dir, tmp_path):
  config = digits_config(digits_data_dir, method='scratch', train_steps=2)
  with workdirs.exclusive(tmp_path):
    with pytest.raises(workdirs.WorkdirBusyError,
                       match=rf'in use by the run of process {os.getpid()} on host '
                             rf'{socket.gethostname()} .*delete .*run.lock'):
      train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / 'config.json').exists()  # refused before writing anything
  assert not (tmp_path / workdirs.LOCK_NAME).exists()  # released


def _dead_pid():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_stale_lock_of_a_dead_local_process_is_taken_over(tmp_path, caplog):
  lock = tmp_path / workdirs.LOCK_NAME
  pid = _dead_pid()
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': pid}))
  with caplog.at_level(logging.WARNING), workdirs.exclusive(tmp_path):
    assert json.loads(lock.read_text())['pid'] == os.getpid()
  assert f'Taking over the lock {lock} of process {pid}' in caplog.text
  assert not lock.exists()
  # Another host's process cannot be checked from here: its lock is respected.
  lock.write_text(json.dumps({'host': 'elsewhere', 'pid': pid}))
  with pytest.raises(workdirs.WorkdirBusyError, match=f'process {pid} on host elsewhere'):
    with workdirs.exclusive(tmp_path):
      pass
  assert json.loads(lock.read_text())['host'] == 'elsewhere'


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
  with workdirs.exclusive(tmp_path):
    monkeypatch.setattr(jax, 'process_index', lambda: 1)
    with workdirs.exclusive(tmp_path):  # another process of the same run
      pass


# ---------------------------------------------------------------------- no data loss

@pytest.fixture(scope='module')
def six_step_run(digits_data_dir, tmp_path_factory):
  """A finished 6-step scratch run (checkpoints at steps 4 and 6): (config, workdir)."""
  workdir = tmp_path_factory.mktemp('six_steps')
  config = digits_config(digits_data_dir, method='scratch', train_steps=6)
  train.train_and_evaluate(config, str(workdir))
  assert sorted(saved_steps(workdir / 'checkpoints')) == [4, 6]
  return config, workdir


def _copy(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / 'run')
  return tmp_path / 'run'


def test_damaged_newest_step_is_moved_aside_and_saved_again(six_step_run, tmp_path, caplog):
  config, original = six_step_run
  workdir = _copy(original, tmp_path)
  ckpt = workdir / 'checkpoints'
  for f in (ckpt / '6' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(f.read_bytes()[:7])  # truncated files
  (workdir / 'results.json').unlink()  # the run did not finish
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(config, str(workdir))
  assert 'Checkpoint step 6' in caplog.text and 'unreadable' in caplog.text
  assert results['steps'] == 6 and sorted(saved_steps(ckpt)) == [4, 6]  # step 6 saved anew
  aside, = [p for p in ckpt.iterdir() if p.name.startswith('6.unreadable-')]
  assert any(f.stat().st_size == 7 for f in (aside / 'state').rglob('*') if f.is_file())


@pytest.mark.parametrize('failure', [
    PermissionError(13, 'Permission denied'), OSError(5, 'Input/output error'),
    ValueError('UNAVAILABLE: the bucket did not answer'), TypeError('a bug')])
def test_other_read_failures_stop_and_move_nothing(six_step_run, tmp_path, monkeypatch, failure):
  config, original = six_step_run
  workdir = _copy(original, tmp_path)
  def restore(self, step, *args, **kwargs):
    raise failure
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'restore', restore)
  expected = TypeError if isinstance(failure, TypeError) else checkpoints.CheckpointReadError
  match = ('a bug' if expected is TypeError else
           r'Reading checkpoint step 6 .* failed .*nothing was moved')
  run = train.Run(config, jax.sharding.Mesh(np.array(jax.devices()), ('data',)))
  with pytest.raises(expected, match=match):
    checkpoints.TrainCheckpoints(str(workdir / 'checkpoints')).restore_latest(run.init_state(0))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['4', '6']


def test_overwrite_never_deletes_the_teacher_the_run_reads(digits_data_dir, digits_teacher_dir,
                                                           tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(digits_teacher_dir, workdir / 'teacher')
  (workdir / 'config.json').write_text(json.dumps({'seed': 7}))  # a run of another config
  for teacher in (workdir / 'teacher', workdir):  # the model directory, or its run's workdir
    config = digits_config(digits_data_dir, method='kd', overwrite=True, **{
        'teacher.checkpoint': str(teacher), 'teacher.model': 'resnet8'})
    with pytest.raises(validation.ConfigError,
                       match=r"overwrite=True would delete '.*run/teacher', the teacher "
                             r"this run reads"):
      train.train_and_evaluate(config, str(workdir))
    assert checkpoints.load_model(workdir / 'teacher')[1]['model'] == 'resnet8'


def test_unreadable_config_json_names_the_file(digits_data_dir, tmp_path):
  (tmp_path / 'config.json').write_text('{"dataset": "dig')  # cut short by a crash
  config = digits_config(digits_data_dir, method='scratch')
  with pytest.raises(errors.UserError, match=r"'.*config.json' is not valid JSON"):
    with workdirs.exclusive(tmp_path):
      workdirs.prepare(config, tmp_path)


def test_workdir_of_an_older_version_resumes(digits_data_dir, tmp_path):
  """config.json of a run started when configs held the offline default's keys."""
  config = digits_config(digits_data_dir, method='scratch')
  with workdirs.exclusive(tmp_path):
    workdirs.prepare(config, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  (tmp_path / 'config.json').write_text(json.dumps(
      {**saved, 'demo': False, 'demo_seeds': '0,1,2,3,4', 'demo_teacher_steps': 400}))
  (tmp_path / 'metrics.jsonl').write_text('{}\n')  # an output overwrite would delete
  with workdirs.exclusive(tmp_path):
    workdirs.prepare(config, tmp_path)
  assert json.loads((tmp_path / 'config.json').read_text()) == saved
  assert (tmp_path / 'metrics.jsonl').exists()


def _zero_variables(name, num_classes=100):
  shapes = jax.eval_shape(models.create(name, num_classes).init, jax.random.key(0),
                          np.zeros((1, 32, 32, 3), np.float32))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_a_second_model_replaces_the_first(tmp_path):
  """Importing resnet20 then resnet32 into one directory leaves resnet32 (orbax alone
  kept resnet20: it skips a step that is not newer)."""
  out = tmp_path / 'teacher'
  checkpoints.save_model(out, _zero_variables('resnet20'), model='resnet20', num_classes=100)
  checkpoints.save_model(out, _zero_variables('resnet32'), model='resnet32', num_classes=100)
  variables, meta = checkpoints.load_model(out)
  assert meta['model'] == 'resnet32' and meta['step'] == 0
  teachers.check_variables(variables, _zero_variables('resnet32'), 'resnet32')
  assert len(list(out.iterdir())) == 1  # the old model is gone
  mine = tmp_path / 'mine'
  mine.mkdir()
  (mine / 'notes.txt').write_text('mine')
  with pytest.raises(errors.UserError,
                     match=r"is not a model checkpoint directory \(it holds 'notes.txt'\)"):
    checkpoints.save_model(mine, _zero_variables('resnet20'), model='resnet20')
  assert os.listdir(mine) == ['notes.txt']


# ------------------------------------------------------------------ offline default

def test_offline_default_uses_the_given_teacher(digits_data_dir, digits_teacher_dir, tmp_path,
                                                monkeypatch):
  seen = {}

  def teacher_statistics(config, teacher_dir, out_dir):  # the analyses are tested elsewhere
    seen['teacher'] = teacher_dir
    numbers = {'top1': 99.0, 'ece': 0.01, 'entropy_bits': 1.0}
    return {'x': numbers, 'x_star': numbers}

  monkeypatch.setattr(demo, 'teacher_statistics', teacher_statistics)
  monkeypatch.setattr(demo, 'VARIANTS', ('oracle_kd',))  # one tiny student suffices here
  config = digits_config(digits_data_dir, train_steps=2, **{
      'teacher.model': 'resnet8', 'teacher.checkpoint': digits_teacher_dir})
  rows, _ = demo.run(config, str(tmp_path / 'demo'), seeds=(0,))
  assert seen['teacher'] == digits_teacher_dir and 'oracle_kd' in rows
  assert not (tmp_path / 'demo' / 'teacher_run').exists()  # no teacher trained
  student = json.loads((tmp_path / 'demo' / 'oracle_kd_seed0' / 'config.json').read_text())
  assert student['teacher']['checkpoint'] == digits_teacher_dir
  config.teacher.checkpoint = str(tmp_path / 'absent')
  with pytest.raises(errors.CheckpointNotFoundError, match='absent.* does not exist'):
    demo.run(config, str(tmp_path / 'bad'), seeds=(0,))
  assert not (tmp_path / 'bad').exists()
