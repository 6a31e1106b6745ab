"""Markdown tables from the JSON lines of `launch/benchmark.py` (see run_all.sh).

    python benchmarks/table.py benchmarks/results      # every *.jsonl in the folder
"""
import collections
import glob
import json
import os
import sys


def load(folder):
  """Records per file; of a run with --rounds, only the medians over the rounds."""
  runs = {}
  for path in sorted(glob.glob(os.path.join(folder, '*.jsonl'))):
    with open(path) as f:
      recs = [json.loads(l) for l in f if l.startswith('{')]
    runs[os.path.basename(path)[:-6]] = [r for r in recs if 'round' not in r]
  return runs


def variant(rec):
  """The --conv_impl token (it implies the XLA options, see launch/benchmark.py)."""
  name = rec.get('conv_impl') or ''
  if rec.get('devices', 1) != 1:
    name += f" ×{rec['devices']} devices"
  return name


def clean(rec):
  """'clean/timed steps, other processes' mean cores' — a run with few clean steps was
  timed on a busy machine and its figure is suspect."""
  return f"{rec.get('n_clean')}/{rec.get('n_timed')}, {rec.get('others_cores')}"


def useful_gflop(recs):
  """Per kind, the fewest FLOPs any variant's compiled step has (XLA's cost_analysis): the
  stock program's. Paired convolutions multiply by exact zeros and chunked weight gradients
  add chunk sums, so their own counts overstate the work; rates use this one."""
  useful = {}
  for r in recs:
    if r.get('framework') == 'jax' and 'gflop_per_step' in r:
      useful[r['kind']] = min(useful.get(r['kind'], float('inf')), r['gflop_per_step'])
  return useful


def steps_table(runs):
  rows = ['| teacher→student | batch | kind | conv | ms | img/s | × torch official | '
          '× torch frozen | × torch same kind | useful GFLOP | GFLOP/s | % peak | compile s | '
          'recompiled | clean steps, others |', '|' + '---|' * 15]
  for name, recs in runs.items():
    if not name.startswith('steps_'):
      continue
    torch = {r['kind']: r for r in recs if r.get('framework') == 'torch'}
    peak = max((r['gflop_per_s'] for r in recs if r.get('kind') == 'peak'), default=None)
    useful = useful_gflop(recs)
    for r in recs:
      if r.get('framework') != 'jax' or r.get('kind') not in ('student', 'kd', 'oracle'):
        continue
      ratio = lambda k: (f"{r['img_per_s'] / torch[k]['img_per_s']:.2f}" if k in torch else '')
      same = {'student': 'student', 'kd': 'kd'}.get(r['kind'])
      rate = useful[r['kind']] / r['ms_median'] * 1e3
      rows.append(
          f"| {r['teacher'] or '—'}→{r['student']} | {r['batch']} | {r['kind']} | "
          f"{variant(r)} | {r['ms_median']:.0f} | {r['img_per_s']:.0f} | "
          f"{ratio('oracle_official') if r['kind'] == 'oracle' else ''} | "
          f"{ratio('oracle_frozen') if r['kind'] == 'oracle' else ''} | "
          f"{ratio(same) if same else ''} | {useful[r['kind']]:.1f} | {rate:.0f} | "
          f"{100 * rate / peak if peak else float('nan'):.0f} | "
          f"{r['compile_s']:.1f} | {r['recompiled']} | {clean(r)} |")
    for k, t in torch.items():
      rows.append(f"| {t['teacher'] or '—'}→{t['student']} | {t['batch']} | torch {k} | | "
                  f"{t['ms_median']:.0f} | {t['img_per_s']:.0f} | | | | | | | | | {clean(t)} |")
    if peak:
      rows.append(f"| (float32 GEMM peak this run: {peak} GFLOP/s) |" + ' |' * 14)
    ours = {(r['kind'], variant(r)): r for r in recs if r.get('framework') == 'jax'}
    for (kind, v), r in ours.items():
      kd = ours.get(('kd', v))
      if kind == 'oracle' and kd:  # issue 8: time ratio over FLOP ratio, oracle vs KD
        cost = (r['ms_median'] / kd['ms_median']) / (r['gflop_per_step'] / kd['gflop_per_step'])
        rows.append(f"| (oracle vs kd, {v}: time ratio / FLOP ratio = {cost:.2f}) |" + ' |' * 14)
  return '\n'.join(rows)


def reinforce_table(runs):
  rows = ['| teacher | batch | conv | forward ms | reinforce ms | reinforce / forward | '
          'clean steps, others |', '|---|---|---|---|---|---|---|']
  for name, recs in runs.items():
    if not name.startswith('reinforce_'):
      continue
    by = collections.defaultdict(dict)
    for r in recs:
      if r.get('framework') == 'jax':
        by[variant(r)][r['kind']] = r
    for v, k in by.items():
      if 'forward' in k and 'reinforce' in k:
        f, g = k['forward'], k['reinforce']
        rows.append(f"| {f['teacher']} | {f['batch']} | {v} | {f['ms_median']:.1f} | "
                    f"{g['ms_median']:.1f} | {g['ms_median'] / f['ms_median']:.2f} | "
                    f"{clean(f)}; {clean(g)} |")
  return '\n'.join(rows)


def devices_table(runs):
  rows = ['| devices | conv | ms | img/s | HLO GFLOP (all devices) | all-reduces | compile s | '
          'clean steps, others |', '|---|---|---|---|---|---|---|---|']
  for name, recs in sorted(runs.items(), key=lambda kv: kv[0]):
    if not name.startswith('devices_'):
      continue
    for r in recs:
      if r.get('framework') == 'jax':
        rows.append(f"| {r['devices']} | {r['conv_impl']} | {r['ms_median']:.0f} | "
                    f"{r['img_per_s']:.0f} | {r['gflop_per_step']:.1f} | {r['all_reduces']} | "
                    f"{r['compile_s']:.1f} | {clean(r)} |")
  return '\n'.join(rows)


def pipeline_table(runs):
  rows = ['| batch | pipeline img/s | oracle step img/s (r56→r20) | pipeline / step |',
          '|---|---|---|---|']
  for name, recs in runs.items():
    if not name.startswith('pipeline_'):
      continue
    for r in recs:
      step = [s for s in runs.get(f"steps_resnet56_resnet20_b{r['batch']}", [])
              if s.get('framework') == 'jax' and s.get('kind') == 'oracle']
      best = max((s['img_per_s'] for s in step), default=None)
      rows.append(f"| {r['batch']} | {r['img_per_s']:.0f} | {best or ''} | "
                  f"{r['img_per_s'] / best if best else float('nan'):.0f}× |")
  return '\n'.join(rows)


def main():
  runs = load(sys.argv[1] if len(sys.argv) > 1 else 'benchmarks/results')
  for title, table in (('Training steps', steps_table), ('reinforce vs forward', reinforce_table),
                       ('Simulated devices (oracle r56→r20, global batch 64)', devices_table),
                       ('Input pipeline', pipeline_table)):
    text = table(runs)
    if text.count('\n') > 1:
      print(f'### {title}\n\n{text}\n')


if __name__ == '__main__':
  main()
