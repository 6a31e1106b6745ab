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
