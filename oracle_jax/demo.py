"""The offline default: a digits teacher, then students three ways over several seeds.

Within a seed every method shares the student's init, the batches and the augmentation,
so the paired differences isolate the method. The students train as one population
(`oracle_jax/population.py`): one program, the teacher's work shared per seed. The table
reports what it measures, whichever method wins (on this small data KD vs oracle-KD is
within seed noise; see README). Its entries: `python launch/main.py` (no --config) and
`launch/demo.py`; its settings: configs/default.py.
"""
import copy

import jax
import numpy as np

from oracle_jax import analysis, fileio, sweep, train

VARIANTS = ('scratch', 'kd', 'oracle_kd')  # sweep variant names: methods, and oracle_<method>
SEEDS = (0, 1, 2, 3, 4)
TEACHER_STEPS = 400  # ≈ 98.5 % test accuracy on the digits (configs/default.py)


def teacher_config(config, teacher_steps):
  c = copy.deepcopy(config)
  with c.unlocked():
    c.method, c.student = 'scratch', copy.deepcopy(config.teacher)
    c.train_steps, c.train_examples, c.seed = teacher_steps, 0, 0
  return c


def teacher_statistics(config, teacher_dir, out_dir):
  """The paper's analyses of the teacher (report in `out_dir`); returns its statistics on
  x and on x* at the configured γ (top-1 %, ECE, entropy bits of softmax(logits/τ))."""
  gammas = sorted({0.2, 1.0, 5.0, 25.0, float(config.oracle.gamma)})
  out = analysis.run(config, teacher=teacher_dir, out_dir=out_dir, gammas=gammas)
  at_gamma = next(r for r in out['results'] if r['gamma'] == config.oracle.gamma)
  numbers = lambda r: {k: v for k, v in r.items() if k != 'reliability'}
  return {'x': numbers(out['scratch']), 'x_star': numbers(at_gamma),
          'selected_gamma': out['selected']}


def format_table(rows, teacher, config, num_seeds):
  x, xs = teacher['x'], teacher['x_star']
  return '\n'.join([
      f'Student {config.student.model} on {config.train_examples or "all"} training digits, '
      f'{config.train_steps} steps, {num_seeds} seeds (test top-1, %):', '',
      sweep.markdown(rows, 'kd'), '',
      f'Teacher {config.teacher.model} on the test split: top-1 {x["top1"]:.2f} % on x, '
      f'{xs["top1"]:.2f} % on x* (γ = {config.oracle.gamma:g}); ECE {x["ece"]:.4f} → '
      f'{xs["ece"]:.4f}; entropy of softmax(logits/{config.temperature:g}) '
      f'{x["entropy_bits"]:.4f} → {xs["entropy_bits"]:.4f} bits. Full report: '
      'analysis/report.md.'])


def run(config, workdir, *, seeds=SEEDS, teacher_steps=TEACHER_STEPS):
  """Trains the teacher for `teacher_steps` (unless `teacher.checkpoint` names one), then
  the students of `config` over `seeds`."""
  workdir = fileio.path(workdir)
  if config.teacher.checkpoint:
    teacher_dir = config.teacher.checkpoint
    train.prepare(config)  # the user's teacher must load before anything is written
  else:
    teacher_run = workdir / 'teacher_run'
    train.train_and_evaluate(teacher_config(config, teacher_steps), teacher_run)
    teacher_dir = teacher_run / 'teacher'
  students = copy.deepcopy(config)
  students.teacher.checkpoint = str(teacher_dir)
  results = sweep.run_grid(students, workdir, VARIANTS, seeds)
  rows = sweep.summarize(results, 'kd')
  teacher = teacher_statistics(config, str(teacher_dir), workdir / 'analysis')
  table = format_table(rows, teacher, config, len(seeds))
  if jax.process_index() == 0:
    print(table)
    oracle_runs = results['oracle_kd']
    summary = dict(
        final_top1=float(np.mean([r['final_top1'] for r in oracle_runs])),
        best_top1=float(np.mean([r['best_top1'] for r in oracle_runs])),
        final_train_loss=float(np.mean([r['final_train_loss'] for r in oracle_runs])),
        steps=config.train_steps, methods=rows, runs=results, teacher=teacher, table=table)
    fileio.write_json(workdir / 'results.json', summary)
  return rows, teacher
