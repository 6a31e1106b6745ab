#!/usr/bin/env python
"""Runs per hour of a population of P students against the same P runs one after another.

    python benchmarks/population.py --shape=digits --sizes=1,2,4,8,16 --steps=10
    python benchmarks/population.py --shape=cifar --student=resnet20 --teacher=resnet56

One JSON line per P, all timing the project's own code: the population step
(`population.jit_population_step`, as `population.train_population` compiles it) and the
sequential oracle-KD step (the one `train.Run.jitted` gives the training loop). Members come in (kd, oracle_kd) pairs sharing a
seed, as a `kd,oracle_kd` sweep makes them: P members see ceil(P/2) distinct batches.
Synthetic uint8 data of the dataset's shape and a randomly initialised teacher (speed
does not depend on the weights). `runs_per_hour` counts runs of `--run_steps` steps
(300: the offline default's students), compile excluded; `speedup` is population runs
per hour over sequential runs per hour; steps are timed after warm-up, median of
`--steps`, population and sequential steps interleaved so load drifts hit both alike.
"""
import copy
import functools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = {'digits': ('digits', 'resnet20', 'resnet8'), 'cifar': ('cifar100', 'resnet56', 'resnet20')}
NUM_TRAIN = 50_000  # training examples: the schedule's epochs (no data is read)

flags.DEFINE_enum('shape', 'digits', sorted(SHAPES), 'digits: 8x8x1, 10 classes (the offline '
                  'default); cifar: 32x32x3, 100.')
flags.DEFINE_string('teacher', None, 'Default: resnet20 (digits), resnet56 (cifar).')
flags.DEFINE_string('student', None, 'Default: resnet8 (digits), resnet20 (cifar).')
flags.DEFINE_integer('batch', 64, 'Batch size of each run.', lower_bound=1)
cli.define_list('sizes', [1, 2, 4, 8, 16], 'Population sizes P.', int, low=1)
flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.', lower_bound=1)
flags.DEFINE_integer('warmup', 2, 'Untimed steps first.', lower_bound=0)
flags.DEFINE_integer('run_steps', 300, 'Steps of one run, for runs/hour.', lower_bound=1)
FLAGS = flags.FLAGS


def member_configs(base, size):
  """(kd, oracle_kd) pairs sharing a seed; P = 1 is one oracle-KD run."""
  configs = []
  for i in range(size):
    c = copy.deepcopy(base)
    c.seed, c.oracle.enabled = i // 2, size == 1 or i % 2 == 1
    configs.append(c)
  return configs


def base_config():
  from configs import common  # pylint: disable=g-import-not-at-top
  dataset, teacher, student = SHAPES[FLAGS.shape]
  c = common.base_config()
  c.dataset, c.batch_size, c.method = dataset, FLAGS.batch, 'kd'
  c.teacher.model, c.student.model = FLAGS.teacher or teacher, FLAGS.student or student
  c.train_steps = FLAGS.run_steps
  c.schedule.name = 'cosine'
  return c


def timed(fn, steps, warmup):
  """Median seconds of `fn()` (which blocks) after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from oracle_jax import compilation_cache, optim, parallel, population, train  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # from a warm cache compile_s is a load (JAX_COMPILATION_CACHE_DIR=: off)

  config = base_config()
  mesh = parallel.make_mesh(jax.devices()[:1])
  # The sequential oracle-KD step: the Run the training loop builds, its jitted step.
  run = train.Run(config, mesh, num_train=NUM_TRAIN)
  spec, options, batch_size = run.spec, run.compiler_options, config.batch_size
  x0 = np.zeros((1, *spec.image_shape), np.float32)
  teacher_variables = jax.jit(run.teacher.init)(jax.random.key(1), x0)
  rng = np.random.default_rng(0)
  batches = lambda d: {'image': rng.integers(0, 256, (d, batch_size, *spec.image_shape), np.uint8),
                       'label': rng.integers(0, spec.num_classes, (d, batch_size)).astype(np.int32)}
  seq_state = parallel.replicate(run.init_state(0), mesh)
  seq_step, _ = run.jitted(seq_state)
  seq_batch = parallel.global_batch({k: v[0] for k, v in batches(1).items()}, mesh)
  state_box = [seq_state]

  def sequential():
    state_box[0], metrics = seq_step(state_box[0], teacher_variables, seq_batch, None)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  sequential()
  seq_compile = time.perf_counter() - start

  for size in FLAGS.sizes:
    configs = member_configs(config, size)
    seeds, arrays = population.plan(configs)
    pmesh = population.make_mesh(size, jax.devices()[:1])
    state = jax.device_put(population.stack([run.init_state(c.seed) for c in configs]),
                           population.member_sharding(pmesh))
    step = population.jit_population_step(
        pmesh, options, student=population.member_model(config.student, config, spec, 1),
        teacher=population.member_model(config.teacher, config, spec, 1),
        spec=spec, learning_rate_fn=run.lr_fn, steps_per_epoch=run.steps_per_epoch,
        make_optimizer=functools.partial(optim.make_optimizer, config), oracle_steps=1,
        reference_batch_size=64, label_smoothing=0.0, member_loop=population.member_loop_for(pmesh))
    batch = jax.device_put(batches(len(seeds)))
    box = [state]

    def population_step():
      box[0], metrics = step(box[0], teacher_variables, batch, arrays)
      jax.block_until_ready(metrics)

    start = time.perf_counter()
    population_step()
    compile_s = time.perf_counter() - start
    # Interleaved: pairs of (population, sequential) timings see the same load.
    pop_times, seq_times = [], []
    for _ in range(FLAGS.steps):
      pop_times.append(timed(population_step, 1, 0 if pop_times else FLAGS.warmup))
      seq_times.append(timed(sequential, 1, 0 if seq_times else FLAGS.warmup))
    t_pop, t_seq = float(np.median(pop_times)), float(np.median(seq_times))
    per_hour = lambda seconds_per_step, runs: 3600 * runs / (seconds_per_step * FLAGS.run_steps)
    print(json.dumps(dict(
        kind='population', members=size, distinct_batches=len(seeds), dataset=config.dataset,
        teacher=config.teacher.model, student=config.student.model, batch=batch_size,
        member_loop=population.member_loop_for(pmesh), backend=jax.default_backend(),
        ms_population_step=round(1e3 * t_pop, 2), ms_sequential_step=round(1e3 * t_seq, 2),
        runs_per_hour_population=round(per_hour(t_pop, size), 1),
        runs_per_hour_sequential=round(per_hour(t_seq, 1), 1),
        speedup=round(t_seq * size / t_pop, 2), compile_s=round(compile_s, 1),
        sequential_compile_s=round(seq_compile, 1), steps=FLAGS.steps,
        run_steps=FLAGS.run_steps)), flush=True)


if __name__ == '__main__':
  cli.run(main)
