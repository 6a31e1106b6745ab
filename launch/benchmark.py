#!/usr/bin/env python
"""Times the project's own training steps; one JSON line per measurement on stdout.

    python launch/benchmark.py --teacher=resnet56 --student=resnet20 --batch=64 \\
        --classes=100 --kinds=student,kd,oracle --steps=20 [--conv_impl=default,chunked,cpu] \\
        [--peak] [--compare-torch] [--devices=1,2,4,8] [--dtype=bfloat16]

`python launch/benchmark.py population [--shape=digits|cifar --sizes=1,2,4,8,16 …]` runs
`benchmarks/population.py`: runs/hour of P students as one population against P runs one
after another.

Kinds (each the real code from `oracle_jax`, never a copy):
  student    the supervised student step (`method='scratch'`) of `steps.train_step`
  kd         plain KD: teacher forward on x + student CE+KD step
  oracle     oracle KD: `reinforce` through the teacher, its logits on x*, the student step
  forward    one eval-mode teacher forward (normalized float input)
  reinforce  `oracle.reinforce` through the teacher alone (issue 2's ratio to `forward`)
  pipeline   the CIFAR input pipeline alone (`data.pipeline.train_batches` over 50,000
             in-memory random uint8 images with pad-4 crop + flip, prefetched, moved to the
             devices as the training loop does), in images/s

Each step kind is jitted by `steps.jit_train_step` over a mesh of the first `--devices`
devices (batch sharded on `data`, state replicated and donated, as `train.py` runs it),
compiled ahead of time (`compile_s` = trace + lower + XLA compile), warmed up, then timed
with `block_until_ready` after waiting for a quiet machine; steps during which other
processes used more than `--other-max` cores are not "clean" and statistics use the clean
steps (all steps when fewer than half are clean), as `benchmarks/torch_reference.py` does.
`gflop_per_step` is XLA's `cost_analysis()` of the compiled step (summed over devices),
`gflop_per_s` that over the median time, `pct_of_peak` that over the float32 GEMM peak
(`jnp.dot` 2048^3, best of 10) measured in the same run (`--peak`). `compiles` counts XLA
compilations of the step (`jax_log_compiles`); `recompiled` is true if any happened during
a step after the first. `all_reduces` counts all-reduce instructions in the compiled HLO.
The batch lives on the devices before timing (data loading is the `pipeline` kind).

Variants: `--conv_impl` (comma list of `oracle_jax.conv` names; 'chunked:8' sets the
chunk size; each name brings `conv.compiler_options(name)`, '/noopts' drops them and
'/cpuopts' adds `conv.CPU_COMPILER_OPTIONS` to any name), `--xla_options` (a JSON dict or
list of dicts) and `--devices` (comma list) multiply; all variants of a kind are compiled
first and then timed round-robin, one step each per round, so load drifts on a shared
machine hit them alike, and ratio lines compare each variant with the first.

`--compare-torch` runs `benchmarks/torch_reference.py` (same teacher, student, batch,
classes, steps; 2 CPU threads, on the device JAX runs on: `cuda` for a GPU) right after
each step kind and prints ratio lines: ours img/s ÷ torch img/s (oracle against
oracle_official and oracle_frozen). `--rounds=N` repeats each kind and its PyTorch run N
times, alternating, so that both see the same drifts of a noisy machine: records and
ratios of each round carry `round`, then those with `rounds` give the median over the
rounds (`ms_median_rounds` lists them); tables use the latter.
"""
import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TORCH_REFERENCE = os.path.join(REPO, 'benchmarks', 'torch_reference.py')
STEP_KINDS = ('student', 'kd', 'oracle')
KINDS = STEP_KINDS + ('forward', 'reinforce', 'pipeline')
TORCH_KINDS = {'student': ('student',), 'kd': ('kd',),
               'oracle': ('oracle_official', 'oracle_frozen')}
_HZ = os.sysconf('SC_CLK_TCK')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--teacher', default='resnet56')
  p.add_argument('--student', default='resnet20')
  p.add_argument('--batch', type=int, default=64, help='global batch size')
  p.add_argument('--classes', type=int, default=100)
  p.add_argument('--kinds', default='student,kd,oracle', help='comma list of: ' + ','.join(KINDS))
  p.add_argument('--steps', type=int, default=20, help='clean timed steps wanted per kind')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps first (>= 2)')
  p.add_argument('--conv_impl', default='auto',
                 help="comma list of oracle_jax.conv implementations ('default', 'chunked', "
                      "'cpu', 'auto'; 'cpu:8' = chunk size 8; '/noopts' without, '/cpuopts' with "
                      "conv.CPU_COMPILER_OPTIONS); several are timed interleaved")
  p.add_argument('--conv_chunk', type=int, default=None,
                 help='examples per weight-gradient chunk of --conv_impl=chunked/cpu')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--gamma', type=float, default=1.0)
  p.add_argument('--T', type=float, default=4.0)
  p.add_argument('--devices', default='1',
                 help='shard the batch over the first N devices (CPU: forces N host devices); '
                      'a comma list times each count in the same run')
  p.add_argument('--peak', action='store_true', help='measure the float32 GEMM peak too')
  p.add_argument('--compare-torch', dest='compare_torch', action='store_true',
                 help='run benchmarks/torch_reference.py after each kind and print ratios')
  p.add_argument('--xla_options', default='',
                 help='JSON dict (or list of dicts: one variant each) of XLA compile options')
  p.add_argument('--dump_hlo', default='', help='write each compiled step HLO into this dir')
  p.add_argument('--other-max', dest='other_max', type=float, default=0.15,
                 help='a step is clean if other processes used <= this many cores')
  p.add_argument('--quiet-wait', dest='quiet_wait', type=float, default=5.0,
                 help='max seconds to wait for a quiet moment before timing a kind')
  p.add_argument('--rounds', type=int, default=1,
                 help='repeat each kind (and --compare-torch) this many times, alternating; '
                      'records tagged "round", then one per measurement with medians over rounds')
  p.add_argument('--retries', type=int, default=2,
                 help='re-time a kind (after waiting up to 60 s for quiet) while fewer than '
                      'half of its steps were clean; the attempt with most clean steps counts')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  args.kinds = [k.strip() for k in args.kinds.split(',') if k.strip()]
  unknown = sorted(set(args.kinds) - set(KINDS))
  if unknown:
    p.error(f'unknown kinds {unknown}; choose from {",".join(KINDS)}')
  args.conv_impl = [c.strip() for c in args.conv_impl.split(',') if c.strip()]
  args.devices = [int(d) for d in str(args.devices).split(',')]
  args.warmup = max(2, args.warmup)
  if args.rounds < 1:
    p.error(f'--rounds must be >= 1, got {args.rounds}')
  options = json.loads(args.xla_options) if args.xla_options else {}
  args.xla_options = options if isinstance(options, list) else [options]
  return args


def force_host_devices(n):
  """Must run before jax is imported: CPU gets n virtual devices."""
  flags = os.environ.get('XLA_FLAGS', '')
  found = re.search(r'--xla_force_host_platform_device_count=(\d+)', flags)
  if found is None and n > 1:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={n}'.strip()


# ------------------------------------------------------------------------------------
# Timing on a shared machine (the quiet-step logic of benchmarks/torch_reference.py)
# ------------------------------------------------------------------------------------

def host_cpu():
  """'<CPU model> x<cores>': results from different machines are not comparable."""
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{model} x{os.cpu_count()}'


def cpu_jiffies():
  """(busy jiffies of the whole machine, user+system jiffies of this process)."""
  with open('/proc/stat') as f:
    v = [int(t) for t in f.readline().split()[1:9]]
  with open('/proc/self/stat') as f:
    s = f.read().rsplit(')', 1)[1].split()
  return sum(v) - v[3] - v[4], int(s[11]) + int(s[12])


def wait_quiet(max_wait, other_max, window=0.5):
  t_end = time.perf_counter() + max_wait
  while True:
    b0, o0 = cpu_jiffies()
    time.sleep(window)
    b1, o1 = cpu_jiffies()
    if ((b1 - b0) - (o1 - o0)) / _HZ / window <= other_max or time.perf_counter() >= t_end:
      return


class CompileCounter(logging.Handler):
  """Counts 'Finished XLA compilation of jit(NAME)' records (jax_log_compiles)."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.names = []

  def emit(self, record):
    m = re.match(r'Finished XLA compilation of jit\((\w+)\)', record.getMessage())
    if m:
      self.names.append(m.group(1))

  def count(self, name):
    return self.names.count(name)


# ------------------------------------------------------------------------------------
# What is timed
# ------------------------------------------------------------------------------------

class Setup:
  """Models, teacher variables, mesh and data shared by every kind of one run."""

  def __init__(self, args, num_devices):
    import dataclasses  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from oracle_jax import data, parallel  # pylint: disable=g-import-not-at-top
    self.args, self.num_devices = args, num_devices
    devices = jax.devices()
    if num_devices > len(devices):
      raise SystemExit(f'--devices={num_devices} but only {len(devices)} devices exist')
    self.mesh = parallel.make_mesh(devices[:num_devices])
    parallel.check_batch_size(args.batch, self.mesh)
    base = 'cifar10' if args.classes == 10 else 'cifar100'
    self.spec = dataclasses.replace(data.dataset_spec(base), num_classes=args.classes)
    rng = np.random.default_rng(args.seed)
    host = {'image': rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8),
            'label': rng.integers(0, args.classes, (args.batch,)).astype(np.int32)}
    self.batch = parallel.global_batch(host, self.mesh)
    self.x = jax.device_put(data.normalize(host['image'], self.spec),
                            parallel.batch_sharding(self.mesh))

  def models(self, conv_name, with_teacher):
    from oracle_jax import conv, models  # pylint: disable=g-import-not-at-top
    name, chunk = parse_conv(conv_name)[:2]
    impl = conv.get(name, chunk or self.args.conv_chunk)
    kw = dict(dtype=self.args.dtype, conv_impl=impl)
    student = models.create(self.args.student, self.args.classes, **kw)
    teacher = models.create(self.args.teacher, self.args.classes, **kw) if with_teacher else None
    return student, teacher

  def teacher_variables(self, teacher):
    """Random teacher whose BN running statistics are those of the benchmark batch
    (as torch_reference.py's calibrate_bn), so its logits have a realistic scale."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from oracle_jax import parallel  # pylint: disable=g-import-not-at-top
    from oracle_jax.models import layers  # pylint: disable=g-import-not-at-top
    variables = jax.jit(teacher.init)(jax.random.key(self.args.seed + 1), self.x[:1])
    _, upd = jax.jit(lambda v, x: teacher.apply(v, x, train=True, mutable=['batch_stats']))(
        variables, self.x)
    m = layers.BN_MOMENTUM  # new = m * old + (1 - m) * batch; old mean 0, old var 1
    stats = {'mean': lambda new: new / (1 - m), 'var': lambda new: (new - m) / (1 - m)}
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, v: stats[path[-1].key](v), upd['batch_stats'])
    variables = {'params': variables['params'], 'batch_stats': batch_stats}
    return parallel.replicate(jax.tree.map(jnp.asarray, variables), self.mesh)


def parse_conv(token):
  """'chunked:8/noopts' → ('chunked', 8, {}): name, chunk size, XLA compile options.
  Options default to `conv.compiler_options(name)`; '/noopts' drops them, '/cpuopts'
  forces `conv.CPU_COMPILER_OPTIONS` (e.g. 'default/cpuopts')."""
  from oracle_jax import conv  # pylint: disable=g-import-not-at-top
  token, _, suffix = token.partition('/')
  name, _, chunk = token.partition(':')
  options = {'': conv.compiler_options(name), 'noopts': {},
             'cpuopts': dict(conv.CPU_COMPILER_OPTIONS)}[suffix]
  return name, int(chunk) if chunk else None, options


def build_step(setup, kind, conv_name, options):
  """(jitted function carrying the XLA compile `options`, its first arguments,
  advance(args, out) -> next args, name)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from oracle_jax import methods, optim, oracle, parallel, steps  # pylint: disable=g-import-not-at-top
  args, mesh = setup.args, setup.mesh
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  student, teacher = setup.models(conv_name, with_teacher=kind != 'student')
  if kind in ('forward', 'reinforce'):
    t_vars = setup.teacher_variables(teacher)
    if kind == 'forward':
      fn = lambda tv, x, y: teacher.apply(tv, x, train=False)
    else:
      fn = lambda tv, x, y: oracle.reinforce(functools.partial(teacher.apply, tv, train=False),
                                             x, y, gamma=args.gamma, reference_batch_size=64)
    fn.__name__ = kind
    jitted = jax.jit(fn, in_shardings=(replicated, sharded, sharded), out_shardings=sharded,
                     compiler_options=options or None)
    # x stays float32, as in train_step: the models cast to --dtype inside
    return jitted, (t_vars, setup.x, setup.batch['label']), None, kind

  config = common.base_config()
  config.batch_size, config.dtype = args.batch, args.dtype
  config.method = 'scratch' if kind == 'student' else 'kd'
  config.oracle.enabled = kind == 'oracle'
  config.oracle.gamma, config.temperature = args.gamma, args.T
  lr_fn = optax.constant_schedule(config.optimizer.learning_rate)
  init = jax.jit(student.init)(jax.random.key(args.seed), setup.x[:1])
  state = steps.TrainState.create(init, optim.make_optimizer(config, lr_fn))
  state = parallel.replicate(state, mesh)
  t_vars = setup.teacher_variables(teacher) if teacher is not None else {}
  state_sharding = jax.tree.map(lambda _: replicated, state)
  distiller = None if config.method == 'scratch' else methods.get(config)
  jitted = steps.jit_train_step(mesh, state_sharding, config=config,
                                oracle_settings=oracle.Settings.from_config(config.oracle),
                                student=student, teacher=teacher, spec=setup.spec,
                                learning_rate_fn=lr_fn, distiller=distiller,
                                compiler_options=options)
  rng = jax.device_put(jax.random.key(0), replicated)
  advance = lambda a, out: (out[0],) + a[1:]  # the state is donated: feed back the new one
  return jitted, (state, t_vars, setup.batch, rng), advance, 'train_step'


def hlo_stats(compiled):
  text = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  all_reduces = len(re.findall(r' all-reduce(?:-start)?\(', text))  # instructions
  return text, float(cost.get('flops', 0.0)), all_reduces


class Variant:
  """One kind with one convolution and one set of XLA options, compiled and warmed up."""

  def __init__(self, setup, kind, conv_name, options, counter):
    import jax  # pylint: disable=g-import-not-at-top
    args = setup.args
    self.kind, self.conv_name, self.options = kind, conv_name, options
    jitted, fargs, self.advance, name = build_step(setup, kind, conv_name, options)
    before = counter.count(name)
    t0 = time.perf_counter()
    lowered = jitted.lower(*fargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    text, flops, self.all_reduces = hlo_stats(compiled)
    if args.dump_hlo:
      os.makedirs(args.dump_hlo, exist_ok=True)
      tag = 'xlaopts' if options else ''
      path = os.path.join(args.dump_hlo, f'{kind}_{conv_name}_{args.teacher}_{args.student}_'
                          f'b{args.batch}_d{setup.num_devices}{tag and "_" + tag}.hlo.txt')
      with open(path, 'w') as f:
        f.write(text)
    # The program is SPMD: cost_analysis() describes one device's share.
    self.flops = flops * setup.num_devices
    self.compile_s, self.lower_s = t2 - t0, t1 - t0
    # The jitted function itself runs: a recompilation would show in the compile count.
    self.run = jitted
    self.args = fargs
    self._jax = jax
    self.counter, self.name = counter, name
    self.compiles = counter.count(name) - before  # the ahead-of-time compilation
    self.step_compiles = []  # XLA compilations during each of this variant's own steps
    for _ in range(args.warmup):
      self.step()

  def step(self):
    before = self.counter.count(self.name)
    out = self.run(*self.args)
    self._jax.block_until_ready(out)
    if self.advance is not None:
      self.args = self.advance(self.args, out)
    self.step_compiles.append(self.counter.count(self.name) - before)

  def record(self, timing, setup, peak):
    import jax  # pylint: disable=g-import-not-at-top
    args = setup.args
    compiles = self.compiles + sum(self.step_compiles)
    rec = dict(timing)
    rec.update(
        framework='jax', jax=jax.__version__, device=jax.devices()[0].platform,
        host=host_cpu(), devices=setup.num_devices, batch=args.batch, classes=args.classes,
        teacher=None if self.kind == 'student' else args.teacher, student=args.student,
        kind=self.kind, conv_impl=self.conv_name, conv_chunk=args.conv_chunk, dtype=args.dtype,
        gamma=args.gamma, T=args.T, compile_s=round(self.compile_s, 2),
        lower_s=round(self.lower_s, 2), gflop_per_step=round(self.flops / 1e9, 3),
        gflop_per_s=round(self.flops / 1e9 / (rec['ms_median'] / 1e3), 1),
        all_reduces=self.all_reduces, compiles=compiles,
        recompiled=sum(self.step_compiles[1:]) > 0)
    if self.options:
      rec['xla_options'] = self.options
    if peak:
      rec['pct_of_peak'] = round(100 * rec['gflop_per_s'] / peak, 1)
    return rec


def with_retries(measure, args):
  """`measure(quiet_wait)` -> records; repeated (waiting longer for a quiet machine)
  while a record has fewer than half its steps clean. Keeps the cleanest attempt."""
  best = measure(args.quiet_wait)
  for _ in range(args.retries):
    if min(r['n_clean'] for r in best) >= max(3, args.steps // 2):
      break
    again = measure(max(args.quiet_wait, 60.0))
    if min(r['n_clean'] for r in again) > min(r['n_clean'] for r in best):
      best = again
  return best


def time_interleaved(variants, args, batch_size, quiet_wait):
  """Times variants round-robin, one step each per round, so that the machine's load
  drifts hit all of them alike; a step is clean when others used <= --other-max cores."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  wait_quiet(quiet_wait, args.other_max)
  times = [[] for _ in variants]
  clean = [[] for _ in variants]
  other = [0] * len(variants)
  rounds = 0
  while rounds < 3 * args.steps and min(len(c) for c in clean) < args.steps:
    rounds += 1
    for i, v in enumerate(variants):
      b0, o0 = cpu_jiffies()
      t0 = time.perf_counter()
      v.step()
      dt = time.perf_counter() - t0
      b1, o1 = cpu_jiffies()
      others = max(0, (b1 - b0) - (o1 - o0))
      other[i] += others
      times[i].append(dt)
      if others <= args.other_max * dt * _HZ + 1:  # +1: jiffy counter granularity
        clean[i].append(dt)
  out = []
  for i in range(len(variants)):
    use = clean[i] if len(clean[i]) >= max(3, args.steps // 2) else times[i]
    ms = np.asarray(use) * 1e3
    median = float(np.median(ms))
    out.append({'ms_median': round(median, 3),
                'ms_p25': round(float(np.percentile(ms, 25)), 3),
                'ms_min': round(float(ms.min()), 3),
                'img_per_s': round(batch_size / median * 1e3, 1),
                'n_timed': len(times[i]), 'n_clean': len(clean[i]),
                'others_cores': round(other[i] / _HZ / sum(times[i]), 3)})
  return out


def time_kind(args, kind, prepared, torch_on):
  """One round of a kind: its variants timed interleaved, then (`torch_on`: a device)
  PyTorch's same steps in a subprocess. Returns (timings per variant, torch records)."""
  timings = with_retries(lambda wait: time_interleaved(prepared, args, args.batch, wait), args)
  theirs = []
  if torch_on and kind in TORCH_KINDS:
    theirs = with_retries(lambda wait: run_torch(args, TORCH_KINDS[kind], wait, torch_on), args)
  return timings, theirs


def combine_rounds(timings, batch_size):
  """One timing (or torch record) from a measurement's rounds: medians of the rounds'
  figures, so that a ratio of two of them resists the machine's speed drifting between
  rounds (each round times ours and PyTorch's steps back to back)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  medians = [t['ms_median'] for t in timings]
  median = float(np.median(medians))
  return dict(timings[-1], ms_median=round(median, 3), ms_median_rounds=medians,
              ms_p25=round(float(np.median([t['ms_p25'] for t in timings])), 3),
              ms_min=min(t['ms_min'] for t in timings),
              img_per_s=round(batch_size / median * 1e3, 1),
              n_timed=sum(t['n_timed'] for t in timings),
              n_clean=sum(t['n_clean'] for t in timings),
              others_cores=round(float(np.mean([t['others_cores'] for t in timings])), 3))


def emit_kind(kind, names, recs, theirs, tag):
  """Records of one kind, ratio lines against its first variant and against PyTorch."""
  for rec in recs:
    emit({**rec, **tag})
  for name, rec in zip(names[1:], recs[1:]):
    ratio(f'{kind}:{name}/{names[0]}', rec, recs[0], kind=kind, **tag)
  for t in theirs:
    emit({**t, **tag})
    for name, rec in zip(names, recs):
      ratio(f'{kind}/{t["kind"]}', rec, t, kind=kind, variant=name, **tag)


def run_pipeline(setup):
  """Images/s of the CIFAR input pipeline alone, as the training loop consumes it."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from oracle_jax import parallel  # pylint: disable=g-import-not-at-top
  from oracle_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  args = setup.args
  rng = np.random.default_rng(args.seed)
  n = 50_000
  data = {'image': rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          'label': rng.integers(0, args.classes, (n,)).astype(np.int32)}
  it = pipeline.prefetch(pipeline.train_batches(
      data, global_batch_size=args.batch, seed=args.seed, start_step=0,
      augmentation=pipeline.augmentation(setup.spec), process_index=0, process_count=1))

  def step():
    jax.block_until_ready(parallel.global_batch(next(it), setup.mesh))

  for _ in range(args.warmup):
    step()
  n_batches = max(200, 10 * args.steps)
  wait_quiet(args.quiet_wait, args.other_max)
  b0, o0 = cpu_jiffies()
  t0 = time.perf_counter()
  for _ in range(n_batches):  # throughput: the prefetch thread overlaps batches
    step()
  elapsed = time.perf_counter() - t0
  b1, o1 = cpu_jiffies()
  return {'framework': 'jax', 'kind': 'pipeline', 'batch': args.batch, 'classes': args.classes,
          'teacher': None, 'student': None, 'devices': setup.num_devices,
          'ms_median': round(elapsed / n_batches * 1e3, 3),
          'img_per_s': round(n_batches * args.batch / elapsed, 1), 'n_timed': n_batches,
          'others_cores': round(max(0, (b1 - b0) - (o1 - o0)) / _HZ / elapsed, 3),
          'gflop_per_step': 0.0}


def measure_peak(args, repeats=20, n=2048):
  """float32 GEMM peak of this machine through XLA: the best of `repeats` products,
  after waiting for a quiet machine (main() measures it again at the end, keeps the best)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  wait_quiet(args.quiet_wait, args.other_max)
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return {'kind': 'peak', 'framework': 'jax', 'op': f'jnp.dot f32 {n}x{n}x{n}',
          'gflop_per_s': round(2 * n**3 / best / 1e9, 1), 'ms_min': round(best * 1e3, 3)}


def torch_device():
  """PyTorch's name for the device our steps run on: the comparison is on the same one."""
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.devices()[0].platform
  if platform not in ('cpu', 'gpu'):
    raise SystemExit(f'--compare-torch needs a CPU or an NVIDIA GPU; JAX runs on {platform}.')
  return 'cuda' if platform == 'gpu' else 'cpu'


def run_torch(args, kinds, quiet_wait, device):
  cmd = [sys.executable, TORCH_REFERENCE, '--device', device,
         '--teacher', args.teacher, '--student', args.student,
         '--batch', str(args.batch), '--classes', str(args.classes), '--kinds', ','.join(kinds),
         '--steps', str(args.steps), '--threads', '2', '--gamma', str(args.gamma),
         '--T', str(args.T), '--other-max', str(args.other_max),
         '--quiet-wait', str(quiet_wait)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith('{')]


def emit(rec):
  print(json.dumps(rec), flush=True)


def ratio(name, ours, theirs, **extra):
  value = ours['img_per_s'] / theirs['img_per_s']
  emit({'ratio': name, 'value': round(value, 3), 'batch': ours['batch'],
        'teacher': ours.get('teacher'), 'student': ours['student'], **extra})


def main(argv=None):
  args = parse_args(argv)
  force_host_devices(max(args.devices))
  import jax  # pylint: disable=g-import-not-at-top
  from oracle_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # from a warm cache compile_s is a load (JAX_COMPILATION_CACHE_DIR=: off)
  counter = CompileCounter()
  jax_logger = logging.getLogger('jax')
  jax_logger.addHandler(counter)
  jax_logger.setLevel(logging.DEBUG)
  jax_logger.propagate = False  # count compilations without printing jax's debug log
  jax.config.update('jax_log_compiles', True)

  torch_on = torch_device() if args.compare_torch else None  # fails before any timing
  setups = {d: Setup(args, d) for d in args.devices}
  setup = setups[args.devices[0]]
  peak = None
  if args.peak:
    rec = measure_peak(args)
    peak = rec['gflop_per_s']
    emit(dict(rec, at='start'))
  variants = [(c, o, d) for d in args.devices for c in args.conv_impl for o in args.xla_options]
  names = [c + (f' {json.dumps(o)}' if o else '') + (f' devices={d}' if len(args.devices) > 1
                                                      else '') for c, o, d in variants]
  results = {}
  for kind in args.kinds:
    if kind == 'pipeline':
      emit(run_pipeline(setup))
      continue
    prepared = [Variant(setups[d], kind, c, {**parse_conv(c)[2], **o}, counter)
                for c, o, d in variants]
    rounds = [time_kind(args, kind, prepared, torch_on) for _ in range(args.rounds)]
    tags = [{'round': i} for i in range(args.rounds)] if args.rounds > 1 else [{}]
    if args.rounds > 1:  # then one record per measurement: medians over the rounds
      rounds.append(tuple([combine_rounds(list(same), args.batch) for same in zip(*part)]
                          for part in zip(*rounds)))
      tags.append({'rounds': args.rounds})
    for (timings, theirs), tag in zip(rounds, tags):
      recs = [v.record(t, setups[d], peak) for (_, _, d), v, t in zip(variants, prepared, timings)]
      emit_kind(kind, names, recs, theirs, tag)
    results.update({(kind, name): rec for name, rec in zip(names, recs)})
  if args.peak:  # again, in case the machine was busy at the start: tables use the best
    emit(dict(measure_peak(args), at='end'))
  if 'forward' in args.kinds and 'reinforce' in args.kinds:
    for name in names:
      fwd, rein = results['forward', name], results['reinforce', name]
      emit({'ratio': 'reinforce_ms/forward_ms', 'variant': name, 'teacher': args.teacher,
            'batch': args.batch, 'value': round(rein['ms_median'] / fwd['ms_median'], 3)})


if __name__ == '__main__':
  if sys.argv[1:2] == ['population']:  # runs/hour of populations: benchmarks/population.py
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    import population as population_benchmark  # pylint: disable=g-import-not-at-top
    sys.exit(population_benchmark.main(sys.argv[2:]))
  main()
