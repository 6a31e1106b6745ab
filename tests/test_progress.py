"""metrics_io's progress bars: shown on process 0 only, on stderr, reaching their totals.
(Where each long command uses them: test_train, test_analysis, test_export.)"""
import jax
import pytest
from helpers import RecordedBars

from oracle_jax import metrics_io


class Clock:
  """tqdm's clock, advanced by hand: rates and redraws without waiting."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture(name='clock')
def _clock(monkeypatch):
  clock = Clock()
  monkeypatch.setattr('tqdm.std.time', clock)
  return clock


@pytest.fixture(name='other_process')
def _other_process(monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)


def last_line(err):
  return err.replace('\r', '\n').strip().splitlines()[-1]


def test_bar_is_on_stderr_on_process_zero(capsys):
  with metrics_io.progress_bar(10, 'img', desc='eval') as bar:
    assert not bar.disable and bar.dynamic_ncols
    bar.update(4)
    bar.update(6)
  out, err = capsys.readouterr()
  assert out == ''
  assert last_line(err).startswith('eval: 100%') and '10/10' in err and 'img/s' in err


def test_nothing_is_shown_off_process_zero(other_process, capsys):
  del other_process
  with metrics_io.progress_bar(10, 'img', desc='eval') as bar:
    assert bar.disable
    bar.update(10)
  progress = metrics_io.Progress(6, 0, 16)
  for step in range(1, 7):
    progress.update(step)
  progress.close()
  assert list(metrics_io.counted(range(3), 150, 64, desc='eval')) == [0, 1, 2]
  assert capsys.readouterr() == ('', '')


def test_training_bar_moves_at_every_step_with_images_per_second(clock, capsys):
  """Half a second a step at 16 images a step: 2 steps/s, 32 img/s; resumed at step 2."""
  progress = metrics_io.Progress(8, 2, 16)
  assert last_line(capsys.readouterr().err).startswith('train:  25%')  # 2/8 done
  for step in range(3, 9):
    clock.now += 0.5
    progress.update(step)
    err = capsys.readouterr().err  # redrawn once a second, not at every step
    assert (f'{step}/8' in last_line(err)) if step % 2 == 0 else err == ''
  progress.close()
  line = last_line(capsys.readouterr().err)
  assert line.startswith('train: 100%') and '8/8' in line and '32 img/s' in line
  assert '2.00step/s' in line


def test_counted_yields_the_batches_and_counts_the_examples(monkeypatch, capsys):
  """540 examples in batches of 64: 8 whole ones, then 28 and the padding."""
  recorded = RecordedBars(monkeypatch)
  batches = [{'i': i} for i in range(9)]
  assert list(metrics_io.counted(iter(batches), 540, 64, desc='eval')) == batches
  assert recorded.bars == [dict(desc='eval', unit='img', total=540, updates=[64] * 8 + [28])]
  err = capsys.readouterr().err
  assert last_line(err).startswith('eval:   0%') and err.endswith('\r')  # erased when done
  for _ in metrics_io.counted(iter(batches), 540, 64, desc='part'):
    break  # a loop left early closes its bar, counting what it was given
  assert recorded.named('part')[0]['updates'] == []
