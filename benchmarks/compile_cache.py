#!/usr/bin/env python
"""The offline default (`python launch/main.py`) and a resume of it, cold vs warm
compilation cache, in one run; one JSON line per run, then the ratios.

    python benchmarks/compile_cache.py [--teacher_steps=30 --train_steps=20 --seeds=0,1]

Each run is the README's command in a fresh process, with fewer steps (the time saved is
compilation, which does not depend on the number of steps), `log_every_steps=1` and
its own workdir. `first_step_s`: from the process's start to the first training step's
metrics line; `whole_s`: the whole command. cold: an empty cache directory; warm: the
one a cold run filled. The resume is the same command after a SIGTERM during the
teacher's training (it saves and exits 143), run cold and warm on copies of that workdir.
`threshold` lines: per-program compile times of the cold run and load times of the warm
run (`jax_log_compiles`), and what a warm run would spend with only programs compiling
for at least T seconds cached (the rest compiled again): which
`compilation_cache.MIN_COMPILE_TIME_SECS` pays.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COMPILED = re.compile(r'Finished XLA compilation of (\S+) in ([0-9.]+) sec')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--teacher_steps', type=int, default=30, help='config.demo_teacher_steps')
  p.add_argument('--train_steps', type=int, default=20, help="the students' train_steps")
  p.add_argument('--seeds', default='0,1', help='config.demo_seeds')
  p.add_argument('--data_dir', default='', help="config.data_dir ('' = TFDS's default)")
  p.add_argument('--thresholds', default='0,0.05,0.1,0.25,0.5,1',
                 help='min compile times (s) whose warm-run cost is estimated')
  return p.parse_args(argv)


def command(args, workdir, cache, *extra):
  return [sys.executable, os.path.join(REPO, 'launch', 'main.py'), f'--workdir={workdir}',
          f'--config.demo_teacher_steps={args.teacher_steps}',
          f'--config.train_steps={args.train_steps}', f'--config.demo_seeds=({args.seeds},)',
          f'--config.data_dir={args.data_dir}', '--config.log_every_steps=1',
          f'--config.compilation_cache_dir={cache}', *extra]


def lines(path):
  try:
    with open(path) as f:
      return f.read().count('\n')
  except FileNotFoundError:
    return 0


def run(args, workdir, cache, stop_after_lines=None):
  """Runs the command; returns (first_step_s, whole_s, per-program compile records).
  `stop_after_lines`: SIGTERM once the teacher logged that many more lines."""
  metrics = os.path.join(workdir, 'teacher_run', 'metrics.jsonl')
  before = lines(metrics)
  env = dict(os.environ, JAX_LOG_COMPILES='1')
  start = time.perf_counter()
  proc = subprocess.Popen(command(args, workdir, cache), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  first = None
  log = []
  import threading  # pylint: disable=g-import-not-at-top
  reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
  reader.start()
  while proc.poll() is None:
    new = lines(metrics) - before
    if first is None and new >= 1:
      first = time.perf_counter() - start
    if stop_after_lines and new >= stop_after_lines:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  proc.wait()
  whole = time.perf_counter() - start
  reader.join()
  expected = 143 if stop_after_lines else 0
  if proc.returncode != expected:
    sys.exit(f'{command(args, workdir, cache)} exited {proc.returncode}:\n' + ''.join(log[-30:]))
  return first, whole, [(m.group(1), float(m.group(2))) for m in map(_COMPILED.search, log) if m]


def emit(rec):
  print(json.dumps(rec), flush=True)


def thresholds(args, cold, warm):
  """Warm-run cost per threshold T: programs compiling in < T s are compiled again."""
  by_name = lambda records: sorted(records, key=lambda r: r[0])  # stable: order kept per name
  cold, warm = by_name(cold), by_name(warm)
  if [n for n, _ in cold] != [n for n, _ in warm]:
    emit({'threshold': 'skipped: the cold and warm runs compiled different programs'})
    return
  emit({'programs': len(cold), 'compile_s_sum': round(sum(t for _, t in cold), 2),
        'load_s_sum': round(sum(t for _, t in warm), 2),
        'programs_under_0.1s': sum(t < 0.1 for _, t in cold)})
  for limit in map(float, args.thresholds.split(',')):
    cost = sum(c if c < limit else w for (_, c), (_, w) in zip(cold, warm))
    emit({'threshold_s': limit, 'cached': sum(c >= limit for _, c in cold),
          'warm_compile_or_load_s': round(cost, 2)})


def main(argv=None):
  args = parse_args(argv)
  root = tempfile.mkdtemp(prefix='compile_cache_bench_')
  try:
    cache = os.path.join(root, 'cache')
    # The digits dataset is prepared on first use: before any timing.
    subprocess.run([sys.executable, '-c', 'import sys; sys.path.insert(0, sys.argv[1]); '
                    'from oracle_jax import data; from oracle_jax.data import sources; '
                    'sources.builder(data.dataset_spec("digits"), sys.argv[2])',
                    REPO, args.data_dir], check=True, stdout=sys.stderr)
    results = {}
    for name, workdir in (('default_cold', 'a'), ('default_warm', 'b')):
      first, whole, compiles = run(args, os.path.join(root, workdir), cache)
      results[name] = (first, whole, compiles)
      emit({'run': name, 'first_step_s': round(first, 2), 'whole_s': round(whole, 2),
            'programs': len(compiles)})
    thresholds(args, results['default_cold'][2], results['default_warm'][2])
    # A preempted run (no cache), then its resume from an empty and from the warm cache.
    preempted = os.path.join(root, 'preempted')
    run(args, preempted, '', stop_after_lines=2)
    shutil.copytree(preempted, preempted + '_warm')
    for name, workdir, cache_dir in (('resume_cold', preempted, os.path.join(root, 'empty')),
                                     ('resume_warm', preempted + '_warm', cache)):
      first, whole, compiles = run(args, workdir, cache_dir)
      results[name] = (first, whole, compiles)
      emit({'run': name, 'first_step_s': round(first, 2), 'whole_s': round(whole, 2),
            'programs': len(compiles)})
    for what in ('default', 'resume'):
      cold, warm = results[f'{what}_cold'], results[f'{what}_warm']
      emit({'ratio': f'{what} cold/warm', 'first_step': round(cold[0] / warm[0], 2),
            'whole': round(cold[1] / warm[1], 2)})
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
