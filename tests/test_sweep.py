"""Grid runs and their tables (final and best top-1, mean ± std, paired differences)."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, digits_config, saved_steps, wait_until

from oracle_jax import errors, sweep


def test_summarize_by_hand():
  results = {'kd': [dict(final_top1=0.90, best_top1=0.92), dict(final_top1=0.80, best_top1=0.84)],
             'oracle_kd': [dict(final_top1=0.93, best_top1=0.93), dict(final_top1=0.81, best_top1=0.86)]}
  rows = sweep.summarize(results, 'kd')
  assert rows['kd']['final_mean'] == pytest.approx(85.0)
  assert rows['kd']['final_std'] == pytest.approx(np.std([90, 80], ddof=1))
  assert rows['oracle_kd']['best_mean'] == pytest.approx(89.5)
  assert rows['oracle_kd']['diff_mean'] == pytest.approx(2.0)   # (3 + 1) / 2 points
  assert rows['oracle_kd']['diff_std'] == pytest.approx(np.std([3, 1], ddof=1))
  assert 'diff_mean' not in rows['kd']
  table = sweep.markdown(rows, 'kd')
  assert '| oracle_kd | 87.00 ± 8.49 | 89.50 ± 4.95 | +2.00 ± 1.41 |' in table
  csv_text = sweep.to_csv(rows).splitlines()
  assert csv_text[0] == 'method,seeds,final_mean,final_std,best_mean,best_std,diff_mean,diff_std'
  assert csv_text[2].startswith('oracle_kd,2,87.0')


def test_variant_names():
  assert sweep.variant('oracle_dkd') == ('dkd', True)
  assert sweep.variant('at') == ('at', False)
  assert sweep.variant('oracle_kd_gamma0.5') == ('kd', True)
  assert sweep.gamma_of('oracle_kd_gamma0.5') == 0.5 and sweep.gamma_of('oracle_kd') is None
  assert sweep.with_gammas(['kd', 'oracle_kd'], [0.2, 5]) == [
      'kd', 'oracle_kd_gamma0.2', 'oracle_kd_gamma5']
  assert sweep.with_gammas(['kd', 'oracle_kd'], []) == ['kd', 'oracle_kd']
  for bad in ('kd_gamma1', 'oracle_kd_gamma-1', 'oracle_kd_gammax', 'oracle_kd_gammainf'):
    with pytest.raises(errors.ConfigError, match='γ suffix'):
      sweep.gamma_of(bad)


def test_grid_on_digits(tmp_path):
  config = digits_config(tmp_path / 'tfds', method='scratch', train_steps=2)
  results = sweep.run_grid(config, str(tmp_path / 'grid'), ['scratch'], [0, 1])
  assert [r['seed'] for r in results['scratch']] == [0, 1]
  assert (tmp_path / 'grid' / 'scratch_seed1' / 'results.json').exists()
  assert results['scratch'][0]['final_top1'] != results['scratch'][1]['final_top1'] or \
      results['scratch'][0]['final_train_loss'] != results['scratch'][1]['final_train_loss']


def test_sweep_command_runs_a_gamma_search_and_resumes_after_sigterm(
    digits_data_dir, digits_teacher_dir, tmp_path):
  """`launch/sweep.py --gammas` as a user runs it: one population; a SIGTERM (a preempted
  VM) saves the population and stops; the same command resumes it, and every member ends
  bit for bit as in an uninterrupted grid; the table lands on disk."""
  steps = 30
  command = [sys.executable, os.path.join(REPO, 'launch', 'sweep.py'),
             '--config=' + os.path.join(REPO, 'configs', 'default.py'),
             f'--config.data_dir={digits_data_dir}', '--config.teacher.model=resnet8',
             f'--config.teacher.checkpoint={digits_teacher_dir}', '--config.batch_size=16',
             '--config.eval_batch_size=64', f'--config.train_steps={steps}',
             '--config.log_every_steps=2', '--config.checkpoint_every_steps=1000',
             '--methods=kd,oracle_kd', '--gammas=1,5', '--seeds=0', f'--workdir={tmp_path}']
  env = {**os.environ, 'XLA_FLAGS': ''}  # one device, as on a laptop
  # Meanwhile, the uninterrupted grid to compare with, in a process of the same devices
  # (XLA:CPU rounds differently in a process of 8 virtual devices, even on a mesh of one).
  straight = subprocess.Popen(command[:-1] + [f'--workdir={tmp_path / "straight"}'], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = tmp_path / 'kd_seed0' / 'metrics.jsonl'
  wait_until(proc, lambda: metrics.exists() and metrics.read_text().count('\n') >= 2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err.decode()[-2000:]
  population, = (tmp_path / 'populations').iterdir()
  saved = saved_steps(population / 'checkpoints')
  assert len(saved) == 1 and 2 <= saved[0] < steps  # saved at the signal
  assert not (tmp_path / 'sweep.md').exists()

  proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'Resuming the population from step {saved[0]}' in proc.stderr
  assert straight.wait(timeout=600) == 0
  read = lambda path: path.read_text()
  for name in sweep.with_gammas(['kd', 'oracle_kd'], [1, 5]):
    assert json.loads(read(tmp_path / f'{name}_seed0' / 'results.json')) == json.loads(
        read(tmp_path / 'straight' / f'{name}_seed0' / 'results.json'))
  table = read(tmp_path / 'sweep.md')
  assert table == read(tmp_path / 'straight' / 'sweep.md')
  for row in ('| kd |', '| oracle_kd_gamma1 |', '| oracle_kd_gamma5 |'):
    assert row in table and row in proc.stdout
  bad = subprocess.run(command[:-3] + ['--gammas=1,x', f'--workdir={tmp_path / "bad"}'],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
      "error: flag --gammas=1,x: element 'x' is not a finite number >= 0")
  assert not (tmp_path / 'bad').exists()
