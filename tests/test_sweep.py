"""Grid runs and their tables (final and best top-1, mean ± std, paired differences)."""
import numpy as np
import pytest
from helpers import digits_config

from oracle_jax import sweep


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


def test_grid_on_digits(tmp_path):
  config = digits_config(tmp_path / 'tfds', method='scratch', train_steps=2)
  results = sweep.run_grid(config, str(tmp_path / 'grid'), ['scratch'], [0, 1])
  assert [r['seed'] for r in results['scratch']] == [0, 1]
  assert (tmp_path / 'grid' / 'scratch_seed1' / 'results.json').exists()
  assert results['scratch'][0]['final_top1'] != results['scratch'][1]['final_top1'] or \
      results['scratch'][0]['final_train_loss'] != results['scratch'][1]['final_train_loss']
