#!/usr/bin/env python
"""Times the project's own training steps; one JSON line per measurement on stdout.

    python benchmarks/steps.py --teacher=resnet56 --student=resnet20 --batch=64 \\
        --classes=100 --kinds=student,kd,oracle --steps=20 [--conv_impl=default,cpu] \\
        [--peak] [--compare-torch] [--devices=1,2,4,8] [--dtype=bfloat16]

(`python launch/benchmark.py …` runs the same.) Kinds, each the real code of `oracle_jax`:
  student    the supervised student step (`method='scratch'`), built by `train.Run`
  kd         plain KD: teacher forward on x + student CE+KD step, built by `train.Run`
  oracle     oracle KD: `reinforce` through the teacher, its logits on x*, the student step
  forward    one eval-mode teacher forward (normalized float input)
  reinforce  `oracle.reinforce` through the teacher alone
  pipeline   the CIFAR input pipeline alone (`data.pipeline.train_batches` over 50,000
             in-memory random uint8 images with pad-4 crop + flip, prefetched, moved to the
             devices as the training loop does), in images/s

A step kind is the `train.Run` of a CIFAR config (configs/common.py with these flags) over
a mesh of the first `--devices` devices, its train step as the loop jits it, compiled ahead
of time (`compile_s` = trace + lower + XLA compile), warmed up, then timed with
`block_until_ready` after waiting for a quiet machine; steps during which other processes
used more than `--other-max` cores are not "clean" and statistics use the clean steps (all
steps when fewer than half are clean), as `benchmarks/torch_reference.py` does
(benchmarks/timing.py).
`gflop_per_step` is XLA's `cost_analysis()` of the compiled step (summed over devices),
`gflop_per_s` that over the median time, `pct_of_peak` that over the float32 GEMM peak
(`jnp.dot` 2048^3, best of 10) measured in the same run (`--peak`). `compiles` counts XLA
compilations of the step (`jax_log_compiles`); `recompiled` is true if any happened during
a step after the first. `all_reduces` counts all-reduce instructions in the compiled HLO.
The batch lives on the devices before timing (data loading is the `pipeline` kind).

Variants: `--conv_impl` (`oracle_jax.conv` names, each with the XLA options `conv.choose`
gives it; '/noopts' drops them and '/cpuopts' sets `conv.CPU_COMPILER_OPTIONS`),
`--xla_options` (a JSON dict or list of dicts) and `--devices` multiply; all variants of a
kind are compiled first and then timed round-robin, one step each per round, so load
drifts on a shared machine hit them alike, and ratio lines compare each with the first.

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
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import timing  # pylint: disable=g-import-not-at-top,wrong-import-position
from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

TORCH_REFERENCE = os.path.join(REPO, 'benchmarks', 'torch_reference.py')
STEP_KINDS = ('student', 'kd', 'oracle')
KINDS = STEP_KINDS + ('forward', 'reinforce', 'pipeline')
TORCH_KINDS = {'student': ('student',), 'kd': ('kd',),
               'oracle': ('oracle_official', 'oracle_frozen')}
DATASETS = {10: 'cifar10', 100: 'cifar100'}  # --classes: the CIFAR shapes
CIFAR_TRAIN = 50_000  # training examples: the schedule's epochs (no data is read)
CONV_SUFFIXES = ('', 'noopts', 'cpuopts')

flags.DEFINE_string('teacher', 'resnet56', 'Teacher model.')
flags.DEFINE_string('student', 'resnet20', 'Student model.')
flags.DEFINE_integer('batch', 64, 'Global batch size.', lower_bound=1)
flags.DEFINE_integer('classes', 100, 'Classes: 10 (CIFAR-10 shape) or 100 (CIFAR-100).')
flags.register_validator('classes', lambda n: n in DATASETS, '--classes must be 10 or 100.')
cli.define_list('kinds', 'student,kd,oracle', 'What to time.', choices=KINDS)
flags.DEFINE_integer('steps', 20, 'Clean timed steps wanted per kind.', lower_bound=1)
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (at least 2 are run).', lower_bound=0)
cli.define_list('conv_impl', 'auto', "oracle_jax.conv implementations ('default', 'chunked', "
                "'cpu', 'auto'); '/noopts' without their XLA options, '/cpuopts' with "
                'conv.CPU_COMPILER_OPTIONS; several are timed interleaved.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
flags.DEFINE_float('gamma', 1.0, 'Oracle γ.', lower_bound=0)
flags.DEFINE_float('T', 4.0, 'KD temperature.', lower_bound=0)
cli.define_list('devices', [1], 'Shard the batch over the first N devices (CPU: forces N '
                'host devices); several counts are timed in the same run.', int, low=1)
flags.DEFINE_bool('peak', False, 'Measure the float32 GEMM peak too.')
flags.DEFINE_bool('compare-torch', False, 'Run benchmarks/torch_reference.py after each '
                  'kind and print ratios.')
flags.DEFINE_string('xla_options', '', 'JSON dict (or list of dicts: one variant each) of '
                    'XLA compile options.')
flags.DEFINE_string('dump_hlo', '', 'Write each compiled step HLO into this directory.')
flags.DEFINE_float('other-max', 0.15, 'A step is clean if other processes used at most this '
                   'many cores.', lower_bound=0)
flags.DEFINE_float('quiet-wait', 5.0, 'Max seconds to wait for a quiet moment before timing '
                   'a kind.', lower_bound=0)
flags.DEFINE_integer('rounds', 1, 'Repeat each kind (and --compare-torch) this many times, '
                     'alternating; records tagged "round", then one per measurement with '
                     'medians over rounds.', lower_bound=1)
flags.DEFINE_integer('retries', 2, 'Re-time a kind (after waiting up to 60 s for quiet) while '
                     'fewer than half of its steps were clean; the attempt with most clean '
                     'steps counts.', lower_bound=0)
flags.DEFINE_integer('seed', 0, 'Seed of the data and the initial variables.', lower_bound=0)


def parse_args():
  """The parsed flags as one namespace ('compare-torch' → compare_torch)."""
  values = flags.FLAGS.flag_values_dict()
  args = argparse.Namespace(**{k.replace('-', '_'): v for k, v in values.items()})
  args.warmup = max(2, args.warmup)
  for token in args.conv_impl:
    name, _, suffix = token.partition('/')
    if suffix not in CONV_SUFFIXES:
      raise errors.UserError(f'--conv_impl={token}: the suffix after / must be noopts or '
                             'cpuopts.')
  try:
    options = json.loads(args.xla_options) if args.xla_options else {}
  except json.JSONDecodeError as e:
    raise errors.UserError(f'--xla_options is not JSON: {e}') from None
  args.xla_options = options if isinstance(options, list) else [options]
  return args


def force_host_devices(n):
  """Must run before jax is imported: CPU gets n virtual devices."""
  flags_ = os.environ.get('XLA_FLAGS', '')
  found = re.search(r'--xla_force_host_platform_device_count=(\d+)', flags_)
  if found is None and n > 1:
    os.environ['XLA_FLAGS'] = f'{flags_} --xla_force_host_platform_device_count={n}'.strip()


# ------------------------------------------------------------------------------------
# What is timed
# ------------------------------------------------------------------------------------

class Setup:
  """Mesh and data shared by every kind of one run."""

  def __init__(self, args, num_devices):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from oracle_jax import data, parallel  # pylint: disable=g-import-not-at-top
    self.args, self.num_devices = args, num_devices
    devices = jax.devices()
    if num_devices > len(devices):
      raise errors.UserError(f'--devices={num_devices} but only {len(devices)} devices exist.')
    self.mesh = parallel.make_mesh(devices[:num_devices])
    parallel.check_batch_size(args.batch, self.mesh)
    self.spec = data.dataset_spec(DATASETS[args.classes])
    rng = np.random.default_rng(args.seed)
    host = {'image': rng.integers(0, 256, (args.batch, *self.spec.image_shape), dtype=np.uint8),
            'label': rng.integers(0, args.classes, (args.batch,)).astype(np.int32)}
    self.batch = parallel.global_batch(host, self.mesh)
    self.x = jax.device_put(data.normalize(host['image'], self.spec),
                            parallel.batch_sharding(self.mesh))

  def run(self, kind, conv_name):
    """The `train.Run` the training loop would build for this kind's config."""
    from configs import common  # pylint: disable=g-import-not-at-top
    from oracle_jax import train  # pylint: disable=g-import-not-at-top
    args, c = self.args, common.base_config()
    c.dataset, c.batch_size, c.dtype = DATASETS[args.classes], args.batch, args.dtype
    c.teacher.model, c.student.model = args.teacher, args.student
    c.method = 'scratch' if kind == 'student' else 'kd'
    c.oracle.enabled = kind in ('oracle', 'reinforce')
    c.oracle.gamma, c.temperature = args.gamma, args.T
    c.conv_impl = conv_name
    return train.Run(c, self.mesh, num_train=CIFAR_TRAIN)

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


def variant_options(run, suffix, xla_options):
  """The XLA options of a variant: the Run's (`conv.choose`), none ('noopts') or the CPU
  ones ('cpuopts'), updated by one of --xla_options."""
  from oracle_jax import conv  # pylint: disable=g-import-not-at-top
  base = {'': run.compiler_options, 'noopts': {}, 'cpuopts': conv.CPU_COMPILER_OPTIONS}[suffix]
  return {**base, **xla_options}


def build_step(setup, kind, conv_token, xla_options):
  """(jitted function, its first arguments, advance(args, out) -> next args, name, XLA
  options): the train step is the one `train.Run.jitted` gives the loop."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from oracle_jax import oracle, parallel  # pylint: disable=g-import-not-at-top
  conv_name, _, suffix = conv_token.partition('/')
  run = setup.run(kind, conv_name)
  run.compiler_options = options = variant_options(run, suffix, xla_options)
  if kind in ('forward', 'reinforce'):
    teacher, t_vars = run.teacher, setup.teacher_variables(run.teacher)
    if kind == 'forward':
      fn = lambda tv, x, y: teacher.apply(tv, x, train=False)
    else:
      fn = lambda tv, x, y: oracle.reinforce(functools.partial(teacher.apply, tv, train=False),
                                             x, y, gamma=setup.args.gamma, reference_batch_size=64)
    fn.__name__ = kind
    replicated, sharded = parallel.replicated(setup.mesh), parallel.batch_sharding(setup.mesh)
    jitted = jax.jit(fn, in_shardings=(replicated, sharded, sharded), out_shardings=sharded,
                     compiler_options=options or None)
    # x stays float32, as in train_step: the models cast to --dtype inside
    return jitted, (t_vars, setup.x, setup.batch['label']), None, kind, options
  state = parallel.replicate(run.init_state(setup.args.seed), setup.mesh)
  train_step, _ = run.jitted(state)
  t_vars = setup.teacher_variables(run.teacher) if run.teacher is not None else {}
  rng = jax.device_put(jax.random.key(0), parallel.replicated(setup.mesh))
  advance = lambda a, out: (out[0],) + a[1:]  # the state is donated: feed back the new one
  return train_step, (state, t_vars, setup.batch, rng), advance, 'train_step', options


def hlo_stats(compiled):
  text = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  all_reduces = len(re.findall(r' all-reduce(?:-start)?\(', text))  # instructions
  return text, float(cost.get('flops', 0.0)), all_reduces


class Variant:
  """One kind with one convolution and one set of XLA options, compiled and warmed up."""

  def __init__(self, setup, kind, conv_name, xla_options, counter):
    import jax  # pylint: disable=g-import-not-at-top
    args = setup.args
    self.kind, self.conv_name = kind, conv_name
    jitted, fargs, self.advance, name, self.options = build_step(setup, kind, conv_name,
                                                                 xla_options)
    before = counter.count(name)
    t0 = time.perf_counter()
    lowered = jitted.lower(*fargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    text, flops, self.all_reduces = hlo_stats(compiled)
    if args.dump_hlo:
      os.makedirs(args.dump_hlo, exist_ok=True)
      tag = 'xlaopts' if self.options else ''
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

  def record(self, measured, setup, peak):
    import jax  # pylint: disable=g-import-not-at-top
    args = setup.args
    compiles = self.compiles + sum(self.step_compiles)
    rec = dict(measured)
    rec.update(
        framework='jax', jax=jax.__version__, device=jax.devices()[0].platform,
        host=timing.host_cpu(), devices=setup.num_devices, batch=args.batch,
        classes=args.classes,
        teacher=None if self.kind == 'student' else args.teacher, student=args.student,
        kind=self.kind, conv_impl=self.conv_name, dtype=args.dtype,
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


def time_kind(args, kind, prepared, torch_on):
  """One round of a kind: its variants timed interleaved, then (`torch_on`: a device)
  PyTorch's same steps in a subprocess. Returns (timings per variant, torch records)."""
  timings = timing.with_retries(
      lambda wait: timing.time_interleaved(prepared, args, args.batch, wait), args)
  theirs = []
  if torch_on and kind in TORCH_KINDS:
    theirs = timing.with_retries(
        lambda wait: run_torch(args, TORCH_KINDS[kind], wait, torch_on), args)
  return timings, theirs


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
  timing.wait_quiet(args.quiet_wait, args.other_max)
  b0, o0 = timing.cpu_jiffies()
  t0 = time.perf_counter()
  for _ in range(n_batches):  # throughput: the prefetch thread overlaps batches
    step()
  elapsed = time.perf_counter() - t0
  b1, o1 = timing.cpu_jiffies()
  return {'framework': 'jax', 'kind': 'pipeline', 'batch': args.batch, 'classes': args.classes,
          'teacher': None, 'student': None, 'devices': setup.num_devices,
          'ms_median': round(elapsed / n_batches * 1e3, 3),
          'img_per_s': round(n_batches * args.batch / elapsed, 1), 'n_timed': n_batches,
          'others_cores': round(max(0, (b1 - b0) - (o1 - o0)) / timing.HZ / elapsed, 3),
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
  timing.wait_quiet(args.quiet_wait, args.other_max)
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
    raise errors.UserError(f'--compare-torch needs a CPU or an NVIDIA GPU; JAX runs on {platform}.')
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


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  args = parse_args()
  force_host_devices(max(args.devices))
  import jax  # pylint: disable=g-import-not-at-top
  from oracle_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # from a warm cache compile_s is a load (JAX_COMPILATION_CACHE_DIR=: off)
  counter = timing.CompileCounter()
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
    prepared = [Variant(setups[d], kind, c, o, counter) for c, o, d in variants]
    rounds = [time_kind(args, kind, prepared, torch_on) for _ in range(args.rounds)]
    tags = [{'round': i} for i in range(args.rounds)] if args.rounds > 1 else [{}]
    if args.rounds > 1:  # then one record per measurement: medians over the rounds
      rounds.append(tuple([timing.combine_rounds(list(same), args.batch) for same in zip(*part)]
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
  cli.run(main)
