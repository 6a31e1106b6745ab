#!/usr/bin/env python
"""Runs per hour of a population of P students against the same P runs one after another.

    python benchmarks/population.py --shape=digits --sizes=1,2,4,8,16 --steps=10
    python benchmarks/population.py --shape=cifar --student=resnet20 --teacher=resnet56

One JSON line per P (and one for the sequential run), all timing the project's own code:
the population step (`population.jit_population_step`, as `population.train_population`
compiles it) and the sequential oracle-KD step (`steps.jit_train_step`, as
`train.train_and_evaluate` compiles it). Members come in (kd, oracle_kd) pairs sharing a
seed, as a `kd,oracle_kd` sweep makes them: P members see ceil(P/2) distinct batches.
Synthetic uint8 data of the dataset's shape and a randomly initialised teacher (speed
does not depend on the weights). `runs_per_hour` counts runs of `--run_steps` steps
(300: the offline default's students), compile excluded; `speedup` is population runs
per hour over sequential runs per hour; steps are timed after warm-up, median of
`--steps`, population and sequential steps interleaved so load drifts hit both alike.
"""
import argparse
import functools
import copy
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPES = {'digits': ('digits', 'resnet20', 'resnet8'), 'cifar': ('cifar100', 'resnet56', 'resnet20')}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--shape', choices=sorted(SHAPES), default='digits',
                 help='digits: 8x8x1, 10 classes (the offline default); cifar: 32x32x3, 100')
  p.add_argument('--teacher', help='default: resnet20 (digits), resnet56 (cifar)')
  p.add_argument('--student', help='default: resnet8 (digits), resnet20 (cifar)')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--sizes', default='1,2,4,8,16', help='population sizes P')
  p.add_argument('--steps', type=int, default=10, help='timed steps per measurement')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--run_steps', type=int, default=300, help='steps of one run, for runs/hour')
  args = p.parse_args(argv)
  dataset, teacher, student = SHAPES[args.shape]
  args.dataset, args.teacher, args.student = dataset, args.teacher or teacher, args.student or student
  args.sizes = [int(s) for s in args.sizes.split(',')]
  return args


def member_configs(base, size):
  """(kd, oracle_kd) pairs sharing a seed; P = 1 is one oracle-KD run."""
  configs = []
  for i in range(size):
    c = copy.deepcopy(base)
    c.seed, c.oracle.enabled = i // 2, size == 1 or i % 2 == 1
    configs.append(c)
  return configs


def base_config(args):
  from configs import common  # pylint: disable=g-import-not-at-top
  c = common.base_config()
  c.dataset, c.batch_size, c.method = args.dataset, args.batch, 'kd'
  c.teacher.model, c.student.model, c.train_steps = args.teacher, args.student, args.run_steps
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


def main(argv=None):
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from oracle_jax import conv, data, methods, models, optim, oracle, parallel, population, steps, train  # pylint: disable=g-import-not-at-top
  from oracle_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # from a warm cache compile_s is a load (JAX_COMPILATION_CACHE_DIR=: off)

  config = base_config(args)
  spec = data.dataset_spec(args.dataset)
  mesh = parallel.make_mesh(jax.devices()[:1])
  conv_impl, options = conv.choose('auto', device_count=1, image_shape=spec.image_shape)
  kwargs = lambda m: train.model_kwargs(m, 'float32', conv_impl)
  student = models.create(args.student, spec.num_classes, **kwargs(config.student))
  teacher = models.create(args.teacher, spec.num_classes, **kwargs(config.teacher))
  steps_per_epoch = 50000 / args.batch
  lr_fn = optim.learning_rate_fn(config, steps_per_epoch, args.run_steps)
  tx = optim.make_optimizer(config, lr_fn)
  x0 = np.zeros((1, *spec.image_shape), np.float32)
  teacher_variables = jax.jit(teacher.init)(jax.random.key(1), x0)
  init = jax.jit(student.init)
  new_state = lambda seed: steps.TrainState.create(init(jax.random.key(seed), x0), tx)
  rng = np.random.default_rng(0)
  batches = lambda d: {'image': rng.integers(0, 256, (d, args.batch, *spec.image_shape), np.uint8),
                       'label': rng.integers(0, spec.num_classes, (d, args.batch)).astype(np.int32)}

  # The sequential oracle-KD step, as train.py compiles it.
  seq_state = parallel.replicate(new_state(0), mesh)
  seq_step = steps.jit_train_step(
      mesh, jax.tree.map(lambda _: parallel.replicated(mesh), seq_state), options,
      config=config, oracle_settings=oracle.Settings.from_config(config.oracle),
      student=student, teacher=teacher, spec=spec, learning_rate_fn=lr_fn,
      distiller=methods.get(config),
      steps_per_epoch=steps_per_epoch)
  seq_batch = parallel.global_batch({k: v[0] for k, v in batches(1).items()}, mesh)
  state_box = [seq_state]

  def sequential():
    state_box[0], metrics = seq_step(state_box[0], teacher_variables, seq_batch, None)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  sequential()
  seq_compile = time.perf_counter() - start

  for size in args.sizes:
    configs = member_configs(config, size)
    seeds, arrays = population.plan(configs)
    pmesh = population.make_mesh(size, jax.devices()[:1])
    state = jax.device_put(population.stack([new_state(c.seed) for c in configs]),
                           population.member_sharding(pmesh))
    step = population.jit_population_step(
        pmesh, options, student=population.member_model(config.student, config, spec, 1),
        teacher=population.member_model(config.teacher, config, spec, 1),
        spec=spec, learning_rate_fn=lr_fn, steps_per_epoch=steps_per_epoch,
        make_optimizer=functools.partial(optim.make_optimizer, config), oracle_steps=1, reference_batch_size=64, label_smoothing=0.0,
        member_loop=population.member_loop_for(pmesh))
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
    for _ in range(args.steps):
      pop_times.append(timed(population_step, 1, 0 if pop_times else args.warmup))
      seq_times.append(timed(sequential, 1, 0 if seq_times else args.warmup))
    t_pop, t_seq = float(np.median(pop_times)), float(np.median(seq_times))
    per_hour = lambda seconds_per_step, runs: 3600 * runs / (seconds_per_step * args.run_steps)
    print(json.dumps(dict(
        kind='population', members=size, distinct_batches=len(seeds), dataset=args.dataset,
        teacher=args.teacher, student=args.student, batch=args.batch,
        member_loop=population.member_loop_for(pmesh), backend=jax.default_backend(),
        ms_population_step=round(1e3 * t_pop, 2), ms_sequential_step=round(1e3 * t_seq, 2),
        runs_per_hour_population=round(per_hour(t_pop, size), 1),
        runs_per_hour_sequential=round(per_hour(t_seq, 1), 1),
        speedup=round(t_seq * size / t_pop, 2), compile_s=round(compile_s, 1),
        sequential_compile_s=round(seq_compile, 1), steps=args.steps,
        run_steps=args.run_steps)), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
