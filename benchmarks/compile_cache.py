#!/usr/bin/env python
"""The offline default (`python launch/demo.py`) and a resume of it, cold vs warm
compilation cache, in one run; one JSON line per run, then the ratios.

    python benchmarks/compile_cache.py [--teacher_steps=30 --train_steps=20 --seeds=0,1]

Each run is the README's offline default in a fresh process (launch/demo.py, whose flags
set the teacher's steps and seeds), with fewer steps (the time saved is
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
sys.path.insert(0, REPO)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_COMPILED = re.compile(r'Finished XLA compilation of (\S+) in ([0-9.]+) sec')

flags.DEFINE_integer('teacher_steps', 30, "The teacher's steps (launch/demo.py).", lower_bound=1)
flags.DEFINE_integer('train_steps', 20, "The students' train_steps.", lower_bound=1)
cli.define_list('seeds', [0, 1], "The students' seeds (launch/demo.py).", int, low=0,
                high=cli.MAX_SEED)
flags.DEFINE_string('data_dir', '', "config.data_dir ('' = TFDS's default).")
cli.define_list('thresholds', '0,0.05,0.1,0.25,0.5,1', 'Min compile times (s) whose warm-run '
                'cost is estimated.', float, low=0)


def command(args, workdir, cache, *extra):
  return [sys.executable, os.path.join(REPO, 'launch', 'demo.py'), f'--workdir={workdir}',
          f'--teacher_steps={args.teacher_steps}', f'--seeds={",".join(map(str, args.seeds))}',
          f'--config.train_steps={args.train_steps}',
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
  for limit in args.thresholds:
    cost = sum(c if c < limit else w for (_, c), (_, w) in zip(cold, warm))
    emit({'threshold_s': limit, 'cached': sum(c >= limit for _, c in cold),
          'warm_compile_or_load_s': round(cost, 2)})


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
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
  cli.run(main)
