"""launch/benchmark.py and benchmarks/table.py run end to end and report what they claim."""
import json
import os
import subprocess
import sys

from helpers import REPO

from oracle_jax import conv


def test_benchmark_reports_steps_and_table(tmp_path):
  out = tmp_path / 'steps_resnet8_resnet8_b8.jsonl'
  cmd = [sys.executable, os.path.join(REPO, 'launch', 'benchmark.py'), '--teacher=resnet8',
         '--student=resnet8', '--batch=8', '--classes=10', '--kinds=forward,oracle',
         '--steps=2', '--warmup=2', '--conv_impl=default,cpu', '--quiet-wait=0', '--retries=0']
  with open(out, 'w') as f:
    subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, check=True, timeout=600)
  lines = [json.loads(l) for l in out.read_text().splitlines() if l.startswith('{')]
  runs = {(r['kind'], r['conv_impl']): r for r in lines if r.get('framework') == 'jax'}
  assert set(runs) == {(k, c) for k in ('forward', 'oracle') for c in ('default', 'cpu')}
  for r in runs.values():
    # 2 clean steps wanted; a step another process disturbed is re-timed (at most 3x).
    assert r['ms_median'] > 0 and 2 <= r['n_timed'] <= 6 and r['gflop_per_step'] > 0
    assert r['n_clean'] <= r['n_timed']
    assert r['compiles'] == 1 and r['recompiled'] is False and r['devices'] == 1
  assert runs['oracle', 'cpu']['xla_options'] == conv.CPU_COMPILER_OPTIONS
  assert 'xla_options' not in runs['oracle', 'default']
  # The stock program has the fewest FLOPs: paired convolutions multiply by zeros.
  assert runs['oracle', 'default']['gflop_per_step'] < runs['oracle', 'cpu']['gflop_per_step']
  ratios = {r['ratio']: r['value'] for r in lines if 'ratio' in r}
  assert set(ratios) == {'forward:cpu/default', 'oracle:cpu/default'}
  want = runs['oracle', 'default']['ms_median'] / runs['oracle', 'cpu']['ms_median']
  assert abs(ratios['oracle:cpu/default'] - want) < 0.01

  table = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'table.py'),
                          str(tmp_path)], capture_output=True, text=True, check=True).stdout
  rows = [l for l in table.splitlines() if '| oracle |' in l]
  assert len(rows) == 2
  useful = runs['oracle', 'default']['gflop_per_step']
  assert all(f'| {useful:.1f} |' in row for row in rows)  # rates use the stock FLOPs


def test_benchmark_rounds_against_torch(tmp_path):
  """--rounds alternates our step and PyTorch's; the summary records are medians of the
  rounds, their ratio is ours ÷ PyTorch's images/s, and tables use only the summary."""
  out = tmp_path / 'steps_resnet8_resnet8_b8.jsonl'
  cmd = [sys.executable, os.path.join(REPO, 'launch', 'benchmark.py'), '--student=resnet8',
         '--batch=8', '--classes=10', '--kinds=student', '--steps=2', '--warmup=2',
         '--conv_impl=cpu', '--quiet-wait=0', '--retries=0', '--rounds=3', '--compare-torch']
  with open(out, 'w') as f:
    subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, check=True, timeout=600)
  lines = [json.loads(l) for l in out.read_text().splitlines() if l.startswith('{')]
  for framework in ('jax', 'torch'):
    recs = [r for r in lines if r.get('framework') == framework]
    per_round = sorted((r for r in recs if 'round' in r), key=lambda r: r['round'])
    assert [r['round'] for r in per_round] == [0, 1, 2]
    (summary,) = [r for r in recs if r.get('rounds') == 3]
    medians = [r['ms_median'] for r in per_round]
    assert summary['ms_median_rounds'] == medians
    assert summary['ms_median'] == sorted(medians)[1]
    assert summary['n_timed'] == sum(r['n_timed'] for r in per_round)
    assert abs(summary['img_per_s'] - 8e3 / summary['ms_median']) < 0.1
    assert summary['device'] == 'cpu'  # PyTorch runs on the device JAX runs on
  ours, theirs = ([r for r in lines if r.get('framework') == f and r.get('rounds') == 3][0]
                  for f in ('jax', 'torch'))
  ratios = [r for r in lines if r.get('ratio') == 'student/student']
  assert sorted(r.get('round', 'all') for r in ratios[:3]) == [0, 1, 2]
  (summary_ratio,) = [r for r in ratios if r.get('rounds') == 3]
  assert abs(summary_ratio['value'] - ours['img_per_s'] / theirs['img_per_s']) < 2e-3

  table = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'table.py'),
                          str(tmp_path)], capture_output=True, text=True, check=True).stdout
  (row,) = [l for l in table.splitlines() if '| student |' in l]
  assert f"| {ours['ms_median']:.0f} |" in row
  (torch_row,) = [l for l in table.splitlines() if '| torch student |' in l]
  assert f"| {theirs['ms_median']:.0f} |" in torch_row


def test_population_benchmark_reports_runs_per_hour():
  cmd = [sys.executable, os.path.join(REPO, 'launch', 'benchmark.py'), 'population',
         '--teacher=resnet8', '--student=resnet8', '--sizes=1,2', '--steps=1', '--warmup=1',
         '--run_steps=10']
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
  lines = [json.loads(l) for l in out.splitlines() if l.startswith('{')]
  assert [(r['members'], r['distinct_batches']) for r in lines] == [(1, 1), (2, 1)]
  for r in lines:
    step_s = r['ms_population_step'] / 1e3
    assert abs(r['runs_per_hour_population'] - 3600 * r['members'] / (step_s * 10)) < 0.1 * (
        r['runs_per_hour_population'])
    assert abs(r['speedup'] - r['ms_sequential_step'] * r['members'] / r['ms_population_step']
               ) < 0.05 * r['speedup']
