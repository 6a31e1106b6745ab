"""The path layer: atomic writes survive a kill mid-write; every file the project writes
goes through it; resumed runs do not duplicate metric lines."""
import json
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, digits_config
from oracle_jax import fileio, metrics_io, train


def test_path_expands_home_and_keeps_urls(monkeypatch, tmp_path):
  monkeypatch.setenv('HOME', str(tmp_path))
  assert str(fileio.path('~/runs/a')) == str(tmp_path / 'runs' / 'a')
  assert str(fileio.path('gs://bucket/runs/a')) == 'gs://bucket/runs/a'
  assert fileio.path('rel').is_absolute()


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
  target = tmp_path / 'sub' / 'results.json'
  fileio.write_json(target, {'a': 1})
  fileio.write_json(target, {'a': 2})
  assert json.loads(target.read_text()) == {'a': 2}
  assert sorted(p.name for p in target.parent.iterdir()) == ['results.json']


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / 'sweep.md'
  fileio.write_text(target, 'old\n')
  real_write = type(fileio.path(tmp_path)).write_bytes

  def write_half_then_fail(self, data):
    real_write(self, data[:len(data) // 2])
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(type(fileio.path(tmp_path)), 'write_bytes', write_half_then_fail)
  with pytest.raises(OSError):
    fileio.write_text(target, 'new content ' * 1000)
  assert target.read_text() == 'old\n'
  assert [p.name for p in tmp_path.iterdir()] == ['sweep.md']  # the temporary is removed


@pytest.mark.parametrize('moment', ['while_writing', 'before_rename'])
def test_kill_during_write_never_truncates(tmp_path, moment):
  """SIGKILL (no cleanup runs) in the middle of an atomic write: the target holds the
  old content, complete."""
  target = tmp_path / 'metrics.jsonl'
  old = ''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in range(100))
  target.write_text(old)
  hook = {'while_writing': 'write_bytes', 'before_rename': 'replace'}[moment]
  script = textwrap.dedent(f'''
      import os, signal, sys
      sys.path.insert(0, {REPO!r})
      from oracle_jax import fileio
      cls = type(fileio.path({str(tmp_path)!r}))
      real = cls.{hook}
      def killed(self, *args):
        if {hook!r} == 'write_bytes':
          real(self, args[0][:10])  # part of the new content is on disk
        os.kill(os.getpid(), signal.SIGKILL)
      cls.{hook} = killed
      fileio.write_text({str(target)!r}, 'new\\n' * 100000)
  ''')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, timeout=120)
  assert proc.returncode == -signal.SIGKILL
  assert target.read_text() == old


def test_unreadable_json_names_the_file(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('{"dataset": "digi')  # cut short
  with pytest.raises(fileio.UnreadableFileError, match=str(path)):
    fileio.read_json(path, 'run config')


def test_resumed_writer_drops_lines_after_the_restored_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(json.dumps({'step': s, 'train/loss': s}) + '\n' for s in (2, 4, 6)))
  writer = metrics_io.MetricWriter(fileio.path(tmp_path), start_step=4)
  writer.write_eval(6, {'top1': 0.5})
  writer.close()
  steps = [json.loads(line)['step'] for line in path.read_text().splitlines()]
  assert steps == [2, 4, 6]
  assert json.loads(path.read_text().splitlines()[-1]) == {'step': 6, 'eval/top1': 0.5}


def test_corrupt_metrics_line_names_the_file(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 2}\n{"step": 4, "tra\n')
  with pytest.raises(fileio.UnreadableFileError, match='Line 2 of .*metrics.jsonl'):
    metrics_io.MetricWriter(fileio.path(tmp_path), start_step=4)


def test_every_file_a_run_writes_goes_through_the_path_layer(digits_data_dir, tmp_path,
                                                             monkeypatch):
  """A scratch run, resumed: every file outside orbax's and TensorBoard's own directories
  was written by fileio (atomically), and no metric step appears twice."""
  written = []
  real = fileio.write_bytes
  monkeypatch.setattr(fileio, 'write_bytes',
                      lambda target, data: written.append(str(real(target, data))))
  config = digits_config(digits_data_dir, method='scratch', train_steps=6)
  train.train_and_evaluate(config, tmp_path)
  (tmp_path / 'checkpoints' / '6').rename(tmp_path / 'step6_moved_away')
  train.train_and_evaluate(config, tmp_path)  # resumes at step 4, logs 5-6 again
  own_dirs = ('checkpoints', 'teacher', 'best', 'tensorboard', 'step6_moved_away')
  files = {str(p) for p in tmp_path.rglob('*') if p.is_file()
           and p.relative_to(tmp_path).parts[0] not in own_dirs}
  assert files and files <= set(written), files - set(written)
  steps = [json.loads(l)['step'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
           if 'train/loss' in l]
  assert steps == [2, 4, 6]
