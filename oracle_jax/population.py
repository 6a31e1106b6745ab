"""Populations: P students of one teacher and one student architecture trained as one
jitted program over a member axis (`jax.vmap`; on one CPU device `lax.map`, see
`member_loop_for`).

Small students are overhead-bound (a resnet8 step on the 8×8 digits is well under a
GFLOP): run one after another, every run pays its own compile, dispatch, host loop,
evaluation and teacher passes. A population pays them once.

A population distils with ONE method of `methods.METHODS` (kd, fitnet, at, dkd, sad) and
may add `scratch` members (the method's loss weights 0, CE weight 1). What may differ
between members (passed as arrays, so one compiled program serves all): the seed (init,
data order, augmentation), distilled or scratch, the oracle on/off and γ, the CE weight,
the learning rate (as a scale of the shared schedule) and the method's numeric weights
(`methods.MEMBER_FIELDS`: KD α, τ; DKD α, β, τ, warm-up; AT β; FitNet weight; SAD β, KD
weight, τ). Everything else — models, teacher, data, batch size, steps, schedule shape,
optimizer, the method's structure (FitNet stage, AT p, SAD features and qk_dim) — is
shared (`compatibility_key`). The distillers' trainable modules (FitNet regressor, SAD
attention) are part of each member's state, trained and checkpointed with it.

Members that share a seed share a batch, and members that share a batch share the
teacher's work: its forward on x (non-oracle members) and its input gradient (oracle
members) once per distinct batch, its forward on x*_γ once per distinct (batch, γ); with
a feature method each forward returns the teacher's features too. Each member computes
the arithmetic of its sequential run (`train.train_and_evaluate`): on one device its
parameters, metrics and results are bit for bit the sequential run's (same convolution,
same teacher computation, its distiller the sequential one with its own weights, the
learning-rate scale applied to the scalar rate).

On several devices the members are split over them (`make_mesh`: member × data), on
several processes over every process's devices: each process then reads every member's
whole batches (`data.train_iterator(..., whole_batches=True)`; a dataset held in memory,
not a streamed one) and places the parts its devices hold (`put`).

Each member keeps its own workdir as a sequential run would (config.json, metrics.jsonl,
TensorBoard, best/, teacher/ for scratch, results.json); the population's training
checkpoints (the stacked state of all members) live in one directory of their own.
"""
import contextlib
import dataclasses
import functools
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oracle_jax import checkpoints, conv, data, errors, fileio, methods, metrics_io, steps
from oracle_jax import models, optim, oracle, parallel, patch_conv, preemption, train, validation
from oracle_jax import workdirs

# Settings a member may choose freely; every other config key must agree across members
# (`check_members` also requires one distilled method).
MEMBER_KEYS = ('seed', 'method', 'oracle.enabled', 'oracle.gamma', 'ce_weight',
               'optimizer.learning_rate', 'overwrite',
               *dict.fromkeys(key for fields in methods.MEMBER_FIELDS.values()
                              for key in fields.values()))
METHODS = (*methods.METHODS, 'scratch')
# What a scratch member logs (its sequential run has no teacher and no distillation terms).
SCRATCH_METRICS = ('ce', 'loss', 'accuracy', 'grad_norm', 'learning_rate')


@dataclasses.dataclass(frozen=True)
class Member:
  name: str      # how metrics, errors and logs name the member, e.g. 'oracle_kd_seed3'
  config: object  # the member's whole config: the one its sequential run would use
  workdir: str


def compatibility_key(config):
  """Configs with equal keys can train as one population (see the module docstring)."""
  flat = json.loads(config.to_json_best_effort())
  for key in MEMBER_KEYS:
    *path, leaf = key.split('.')
    node = flat
    for p in path:
      node = node.get(p, {})
    node.pop(leaf, None)
  return json.dumps(flat, sort_keys=True)


def supported(config):
  """Whether `config` can be a population member: a distillation method or scratch, whole
  batches (no gradient accumulation) and, on several processes, a dataset held in memory
  (each process reads every member's whole batches: `data.train_iterator`'s
  `whole_batches`; a streamed dataset's stream is per process)."""
  return (config.method in METHODS and config.grad_accum_steps == 1
          and (jax.process_count() == 1 or not data.dataset_spec(config.dataset).streamed))


def _distilled(config):
  return config.method != 'scratch'


def _oracle(config):
  return _distilled(config) and bool(config.oracle.enabled)


def distilled_method(configs):
  """The method the distilled members of `configs` share (None if all are scratch)."""
  return next((c.method for c in configs if _distilled(c)), None)


def member_fields(configs):
  """{distiller field: f32[P]}: each member's value of the traced fields of the shared
  method (`methods.MEMBER_FIELDS`), as its sequential run's distiller holds it; a scratch
  member takes the first distilled member's, its loss weights 0."""
  method = distilled_method(configs)
  if method is None:
    return {}
  reference = methods.get(next(c for c in configs if _distilled(c)))
  def value(config, field):
    if _distilled(config):
      return getattr(methods.get(config), field)
    return 0.0 if field in methods.LOSS_WEIGHTS[method] else getattr(reference, field)
  return {field: np.asarray([value(c, field) for c in configs], np.float32)
          for field in methods.MEMBER_FIELDS[method]}


def plan(configs, base_learning_rate=None):
  """`(seeds, arrays)`: the distinct data seeds (batch d comes from `seeds[d]`) and the
  arrays the step reads: each member's batch, scalars (the learning rate relative to
  `base_learning_rate`, that of the shared schedule; default the first member's; the CE
  weight; the distiller's fields, `member_fields`) and rows of the teacher's tables
  (`teacher_signals`), whose parts are computed only where a member needs them: the
  teacher's plain forward on each batch of a non-oracle member, its forward on x* of each
  distinct (batch, γ) of an oracle member, and its input gradient (and the logits of that
  pass) on each batch of an oracle member."""
  seeds = list(dict.fromkeys(int(c.seed) for c in configs))
  batch_of = lambda c: seeds.index(int(c.seed))
  plain = list(dict.fromkeys(batch_of(c) for c in configs if _distilled(c) and not _oracle(c)))
  grad = list(dict.fromkeys(batch_of(c) for c in configs if _oracle(c)))
  signals = list(dict.fromkeys((batch_of(c), float(c.oracle.gamma)) for c in configs
                               if _oracle(c)))
  # A member's rows: its distillation target and its teacher-on-x logits (for metrics).
  # Scratch members read row 0, a target (features included) whenever a teacher exists,
  # and weight it 0.
  target_rows, x_rows = [], []
  for c in configs:
    if _oracle(c):
      target_rows.append(len(plain) + signals.index((batch_of(c), float(c.oracle.gamma))))
      x_rows.append(len(plain) + len(signals) + grad.index(batch_of(c)))
    else:
      row = plain.index(batch_of(c)) if _distilled(c) else 0
      target_rows.append(row)
      x_rows.append(row)
  base_lr = base_learning_rate or configs[0].optimizer.learning_rate
  f32 = lambda values: np.asarray(values, np.float32)
  i32 = lambda values: np.asarray(values, np.int32).reshape(-1)
  arrays = dict(
      batch=i32([batch_of(c) for c in configs]),
      teacher_row=i32(target_rows), teacher_x_row=i32(x_rows),
      plain_batch=i32(plain), gradient_batch=i32(grad),
      oracle_gradient=i32([grad.index(b) for b, _ in signals]),
      oracle_gamma=f32([g for _, g in signals]).reshape(-1),
      distiller=member_fields(configs),
      ce_weight=f32([c.ce_weight if _distilled(c) else 1.0 for c in configs]),
      learning_rate_scale=f32([c.optimizer.learning_rate / base_lr for c in configs]))
  return seeds, arrays


# -------------------------------------------------------------------------------- step

def teacher_signals(teacher, teacher_variables, x, labels, arrays, *, with_features,
                    oracle_steps, reference_batch_size, member_loop='vmap'):
  """`(logits, features)`: the teacher's tables, rows as `plan` lays them out. The
  targets come first: its forward on each batch `plain_batch` names, then its forward on
  x* of each (batch, γ); then the logits of its input-gradient pass on each batch
  `gradient_batch` names (for metrics). `features` (None unless `with_features`) has a
  row per target, from the same forward as its logits. Each part is the computation a
  sequential run does for that member (`steps.teacher_signal`: a plain forward, or the
  oracle's pass and one forward on x*, with the same `return_features`), so members get
  their sequential run's signals exactly. The batches go through the teacher as
  `member_loop` says (see `over_members`)."""
  logits_fn = functools.partial(teacher.apply, teacher_variables, train=False)
  target_fn = functools.partial(logits_fn, return_features=with_features)
  each = lambda fn, *args: over_members(fn, member_loop, *args)
  targets, gradient_logits = [], []
  if arrays['plain_batch'].shape[0]:
    targets.append(each(target_fn, x[arrays['plain_batch']]))
  if arrays['gradient_batch'].shape[0]:
    gradient = functools.partial(oracle.input_gradient, logits_fn,
                                 reference_batch_size=reference_batch_size)
    x_g, labels_g = x[arrays['gradient_batch']], labels[arrays['gradient_batch']]
    grads, logits_x = each(gradient, x_g, labels_g)  # one input gradient per batch
    gradient_logits.append(logits_x)
    which = arrays['oracle_gradient']
    gamma = arrays['oracle_gamma'].reshape(-1, *([1] * (x.ndim - 1)))
    x_star, grad = x_g[which], grads[which]
    for step in range(oracle_steps):
      if step:  # later steps start from each γ's own iterate
        grad, _ = each(gradient, x_star, labels_g[which])
      x_star = oracle.reinforce_update(x_star, grad, gamma)
    targets.append(each(target_fn, x_star))
  targets = jax.tree.map(lambda *parts: jnp.concatenate(parts), *targets)
  logits, features = targets if with_features else (targets, None)
  return jax.lax.stop_gradient((jnp.concatenate([logits, *gradient_logits]), features))


def population_step(state, teacher_variables, batch, arrays, *, student, teacher, spec,
                    learning_rate_fn, make_optimizer, steps_per_epoch, oracle_steps,
                    reference_batch_size, label_smoothing, member_loop='vmap',
                    distiller=methods.KD(alpha=1.0, temperature=4.0)):
  """One optimizer step of every member. `state`: TrainStates stacked on a leading
  member axis [P]; `batch`: the distinct batches stacked, [D, B, …]; `arrays`: `plan`'s;
  `distiller`: the shared method's (`methods.get` of a distilled member; unused without a
  teacher), each member's own fields (`arrays['distiller']`) replacing its traced ones;
  `member_loop`: see `over_members`; `make_optimizer`: the members' optimizer of a learning-rate schedule.
  Returns the new state and metrics of shape [P]."""
  x = data.normalize(batch['image'], spec)
  labels = batch['label']
  member_x, member_labels = x[arrays['batch']], labels[arrays['batch']]
  metrics, member_logits, member_features = {}, None, None
  if teacher is not None:
    logits, features = teacher_signals(
        teacher, teacher_variables, x, labels, arrays, with_features=distiller.needs_features,
        oracle_steps=oracle_steps, reference_batch_size=reference_batch_size,
        member_loop=member_loop)
    member_logits = logits[arrays['teacher_row']]
    member_features = jax.tree.map(lambda f: f[arrays['teacher_row']], features)
    by_member = jax.vmap(steps.accuracy)
    metrics = {'teacher_accuracy': by_member(logits[arrays['teacher_x_row']], member_labels),
               'oracle_accuracy': by_member(member_logits, member_labels)}

  def member_step(state, x, labels, t_logits, t_features, fields, ce_weight, lr_scale):
    epoch = jnp.floor(state.step / steps_per_epoch) + 1
    # The sequential run's distiller with this member's weights: its very loss code.
    member_distiller = None if teacher is None else dataclasses.replace(distiller, **fields)
    grads, batch_stats, m = steps.student_gradients(
        state.trainable(), state.batch_stats, x, labels, t_logits, t_features, epoch,
        student=student, distiller=member_distiller, ce_weight=ce_weight,
        label_smoothing=label_smoothing)
    # The scale multiplies the scalar learning rate, not the update: at scale 1 every
    # parameter's arithmetic is then that of the sequential run, bit for bit.
    member_lr_fn = lambda step: learning_rate_fn(step) * lr_scale
    m.update(grad_norm=optax.tree.norm(grads), learning_rate=member_lr_fn(state.step))
    tx = make_optimizer(member_lr_fn)
    return steps.apply_gradients(state, grads, batch_stats, tx), m

  state, member_metrics = over_members(
      member_step, member_loop, state, member_x, member_labels, member_logits, member_features,
      arrays['distiller'], arrays['ce_weight'], arrays['learning_rate_scale'])
  return state, {**metrics, **member_metrics}


def over_members(fn, member_loop, *args):
  """`fn` of each member's slice of `args` (leading axis): 'vmap' batches the members'
  computations; 'map' (`lax.map`) runs them one after another inside the one program,
  in a loop; 'unroll' too, each member's computation written out (no loop)."""
  if member_loop == 'map':
    return jax.lax.map(lambda a: fn(*a), args)
  if member_loop == 'unroll':
    return jax.lax.scan(lambda _, a: (None, fn(*a)), None, args, unroll=True)[1]
  return jax.vmap(fn)(*args)


def member_loop_for(mesh, distiller=None):
  """'map' on one CPU device, 'vmap' elsewhere. On CPU a vmapped student is no faster
  than its members one by one (batched matrix products and grouped convolutions run
  ~2x slower per member than single ones, benchmarks/README.md), while `lax.map` keeps
  each member's own fast kernels and still pays dispatch, host loop and teacher once;
  accelerators and several devices (members split over them) batch well. A FitNet
  population on one CPU device unrolls its members instead: XLA's CPU compiles a stock
  convolution (the regressor's) inside a loop to other arithmetic than outside it, where
  the sequential run has it (the models' `patch_conv` is the same in both); unrolling
  costs compile time, one copy of the step per member."""
  one_cpu = jax.default_backend() == 'cpu' and mesh.shape['member'] == 1
  if not one_cpu:
    return 'vmap'
  return 'unroll' if isinstance(distiller, methods.FitNet) else 'map'


def member_metric_names(config, names):
  """The metrics a member's sequential run logs, out of the population's `names`."""
  if not _distilled(config):
    return [n for n in names if n in SCRATCH_METRICS]
  return [n for n in names if n != 'oracle_accuracy' or _oracle(config)]


# ------------------------------------------------------------------------- devices, jit

def member_model(model_config, config, spec, device_count):
  """The student (or teacher) model of a population: the convolution `config.conv_impl`
  chooses, as for a sequential run (on one CPU device 'auto' is `patch_conv` for the
  digits, so each member computes its sequential run's arithmetic). On several CPU
  devices tiny images keep `patch_conv` too: vmapped, XLA's CPU convolutions become
  grouped convolutions ~10x slower than alone, inside `lax.map` the stock ones too
  (benchmarks/README.md). The parameters are the same whatever the convolution."""
  conv_impl, _ = conv.choose(config.conv_impl, device_count, image_shape=spec.image_shape)
  if (jax.default_backend() == 'cpu' and conv.patch_sized(spec.image_shape)
      and config.conv_impl == 'auto'):
    conv_impl = patch_conv.patch_conv
  return models.create(model_config.model, spec.num_classes,
                       **train.model_kwargs(model_config, config.dtype, conv_impl))


def make_mesh(population_size, devices=None):
  """A 2-D mesh (member × data): the population is split over as many devices as
  divide it, and each member's batch over the rest. The devices are put in process
  order, so that the members go over the processes and a member's batch over devices
  of one process where they fit."""
  devices = sorted(jax.devices() if devices is None else devices,
                   key=lambda d: (d.process_index, d.id))
  devices = np.asarray(devices)
  members = math.gcd(population_size, devices.size)
  return Mesh(devices.reshape(members, devices.size // members), ('member', 'data'))


def member_sharding(mesh):
  return NamedSharding(mesh, P('member'))


def jit_population_step(mesh, compiler_options=None, **kwargs):
  """The population step jitted once: members sharded on `member`, each batch on `data`,
  state donated; the metrics [P] come back replicated, readable on every process."""
  members, replicated = member_sharding(mesh), NamedSharding(mesh, P())
  return jax.jit(functools.partial(population_step, **kwargs),
                 in_shardings=(members, replicated, NamedSharding(mesh, P(None, 'data')),
                               replicated),
                 out_shardings=(members, replicated), donate_argnums=(0,),
                 compiler_options=compiler_options or None)


def jit_population_eval(mesh, compiler_options=None, member_loop='vmap', **kwargs):
  """`(stacked variables, batch) -> sums [P]`: `steps.eval_step` of every member."""
  def step(variables, batch):
    return over_members(lambda v: steps.eval_step(v, batch, **kwargs), member_loop, variables)
  return jax.jit(step, in_shardings=(member_sharding(mesh), NamedSharding(mesh, P('data'))),
                 out_shardings=NamedSharding(mesh, P()), compiler_options=compiler_options or None)


def put(tree, sharding):
  """Host arrays, whole on every process, as global arrays of `sharding`: each process
  places the parts its own devices hold (on one process, `jax.device_put`)."""
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), tree)


def fetch(tree):
  """Global arrays (a member-sharded state) whole on every process, as numpy."""
  return multihost_utils.process_allgather(tree, tiled=True)


def stack(trees):
  return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)


def unstack(tree, index):
  return jax.tree.map(lambda leaf: leaf[index], tree)


# -------------------------------------------------------------------------------- loop

def check_members(members):
  if not members:
    raise errors.ConfigError('A population needs at least one member.')
  names = [m.name for m in members]
  if len(set(names)) != len(names):
    raise errors.ConfigError(f'Population member names must be distinct, got {names}.')
  for m in members:
    if not supported(m.config):
      raise errors.ConfigError(f'Member {m.name!r} (method {m.config.method!r}) cannot join a '
                       f'population: methods {METHODS}, grad_accum_steps 1, on several processes '
                       'a dataset held in memory (not a streamed one).')
  distilled = [m for m in members if _distilled(m.config)]
  for m in distilled[1:]:
    if m.config.method != distilled[0].config.method:
      raise errors.ConfigError(
          f'Member {m.name!r} distils with {m.config.method!r}, {distilled[0].name!r} with '
          f'{distilled[0].config.method!r}: a population has one distillation method '
          '(plus scratch members).')
  key = compatibility_key(members[0].config)
  for m in members[1:]:
    if compatibility_key(m.config) != key:
      raise errors.ConfigError(f'Member {m.name!r} differs from {members[0].name!r} in more than '
                       f'{", ".join(MEMBER_KEYS)}; it cannot share their program.')


def evaluate(run, mesh, eval_step, variables, size):
  """Per-member rates over the eval split (as `train.evaluate`, with a member axis)."""
  batches = data.eval_iterator(run.spec, data_dir=run.data_dir,
                               global_batch_size=run.config.eval_batch_size, whole_batches=True)
  sharding = NamedSharding(mesh, P('data'))
  totals = None
  for batch in batches:
    sums = eval_step(variables, put(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  counts = totals.pop('count')
  return [{**{k.replace('correct_', '').replace('loss_sum', 'loss'): float(v[i]) / counts[i]
              for k, v in totals.items()}, 'examples': int(counts[i])} for i in range(size)]


def evaluate_teachers(members, run, teacher_variables):
  """{member name: teacher top-1 on x and x*} as each member's sequential run reports it.
  Every distinct evaluation (plain, or the oracle at each γ) runs in one program over one
  pass of the eval split, each as `steps.teacher_eval_step` computes it."""
  key = lambda c: (float(c.oracle.gamma) if _oracle(c) else None)
  settings = {}
  for m in members:
    if _distilled(m.config):
      settings.setdefault(key(m.config), dataclasses.replace(
          oracle.Settings.from_config(m.config.oracle), enabled=_oracle(m.config)))

  def step(variables, batch):
    sums = {'count': jnp.sum(batch['mask'])}
    for i, oracle_settings in enumerate(settings.values()):
      one = steps.teacher_eval_step(variables, batch, oracle_settings=oracle_settings,
                                    teacher=run.teacher, spec=run.spec)
      sums.update({f'{name}/{i}': v for name, v in one.items() if name != 'count'})
    return sums

  rates = train.evaluate(run, steps.jit_eval_step(step, run.mesh, run.compiler_options),
                         teacher_variables)
  by_key = {k: {name.split('/')[0]: v for name, v in rates.items() if name.endswith(f'/{i}')}
            for i, k in enumerate(settings)}
  return {m.name: by_key[key(m.config)] if _distilled(m.config) else {} for m in members}


def train_population(members, directory, *, mesh=None):
  """Trains `members` (a list of `Member`) as one population, resuming from the newest
  checkpoint in `directory`; returns each member's results (as `train.train_and_evaluate`
  returns them), in order, and writes each member's `results.json`."""
  check_members(members)
  configs = [m.config for m in members]
  for c in configs:
    validation.validate_config(c)
  devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
  # The teacher, data and schedule come from a distilled member's config when one exists.
  reference = next((c for c in configs if _distilled(c)), configs[0])
  run, data_teacher = train.prepare(reference, mesh=parallel.make_mesh(devices))
  pmesh = make_mesh(len(members), devices)
  parallel.check_batch_size(reference.batch_size, Mesh(pmesh.devices[0], ('data',)))
  member_dirs = [fileio.path(m.workdir) for m in members]
  directory = fileio.path(directory)
  with contextlib.ExitStack() as locks:  # only now: bad input writes nothing
    for d in [directory, *member_dirs]:
      locks.enter_context(workdirs.exclusive(d))
    for c, d in zip(configs, member_dirs):
      workdirs.prepare(c, d)
    return _train(members, configs, reference, run, data_teacher, pmesh, devices,
                  member_dirs, directory)


def _train(members, configs, reference, run, data_teacher, pmesh, devices, member_dirs,
           directory):
  manager = checkpoints.TrainCheckpoints(directory / 'checkpoints', keep=reference.keep_checkpoints)

  seeds, arrays = plan(configs, reference.optimizer.learning_rate)
  state = put(stack([run.init_state(c.seed) for c in configs]), member_sharding(pmesh))
  state, meta = manager.restore_latest(state)
  size = len(members)
  best_top1 = meta.get('best_top1', [0.0] * size)
  last_eval = meta.get('last_eval', [{}] * size)
  train_loss = meta.get('train_loss', [float('nan')] * size)
  start = int(fetch(state.step)[0])
  if start:
    logging.warning('Resuming the population from step %d in %s', start, directory)

  teacher_variables = parallel.replicate(data_teacher, pmesh) if run.teacher else {}
  student = member_model(reference.student, reference, run.spec, len(devices))
  teacher = (member_model(reference.teacher, reference, run.spec, len(devices))
             if run.teacher else None)
  train_step = jit_population_step(
      pmesh, run.compiler_options, student=student, teacher=teacher, distiller=run.distiller,
      spec=run.spec,
      learning_rate_fn=run.lr_fn, make_optimizer=functools.partial(optim.make_optimizer, reference),
      steps_per_epoch=run.steps_per_epoch, oracle_steps=reference.oracle.steps,
      reference_batch_size=reference.oracle.reference_batch_size,
      label_smoothing=reference.label_smoothing,
      member_loop=member_loop_for(pmesh, run.distiller))
  eval_step = jit_population_eval(pmesh, run.compiler_options, member_loop_for(pmesh),
                                  model=student, spec=run.spec)
  batch_sharding = NamedSharding(pmesh, P(None, 'data'))
  arrays = parallel.replicate(arrays, pmesh)
  writers = [metrics_io.MetricWriter(d, start, tensorboard=reference.tensorboard)
             for d in member_dirs]
  iterators = [data.train_iterator(run.spec, data_dir=run.data_dir,
                                   global_batch_size=reference.batch_size, seed=seed,
                                   start_step=start, train_examples=reference.train_examples,
                                   whole_batches=True)
               for seed in seeds]
  eval_every = int(round(reference.eval_every_epochs * run.steps_per_epoch))
  pending = []
  preemption_notice = preemption.Notice(start)
  progress = metrics_io.Progress(run.total_steps, start, reference.batch_size * size,
                                 enabled=jax.process_index() == 0)
  every = lambda step, period: step == run.total_steps or (period > 0 and step % period == 0)

  def flush():
    nonlocal pending, train_loss
    train_loss = _write_train(members, writers, pending, manager.latest_step(), train_loss)
    pending = []

  try:
    for step in range(start + 1, run.total_steps + 1):
      host = [next(it) for it in iterators]
      if step == start + 1:
        for b in host:
          validation.check_batch(b, run.spec)
      batch = put({k: np.stack([b[k] for b in host]) for k in ('image', 'label')},
                  batch_sharding)
      state, metrics = train_step(state, teacher_variables, batch, arrays)
      pending.append((step, metrics))
      stop = preemption_notice.reached(step)
      if every(step, reference.log_every_steps) or stop:
        flush()
        progress.update(step)
      if every(step, eval_every):
        last_eval = evaluate(run, pmesh, eval_step, state.variables(), size)
        variables = None
        for i, (m, writer) in enumerate(zip(members, writers)):
          writer.write_eval(step, last_eval[i])
          if last_eval[i]['top1'] > best_top1[i]:
            best_top1[i] = last_eval[i]['top1']
            variables = variables or fetch(state.variables())
            checkpoints.save_model(member_dirs[i] / 'best', unstack(variables, i), step=step,
                                   **train._model_meta(m.config, run, top1=best_top1[i]))  # pylint: disable=protected-access
      if every(step, reference.checkpoint_every_steps) or stop:
        flush()  # a non-finite step is never checkpointed
        manager.save(step, state, dict(best_top1=best_top1, last_eval=last_eval,
                                       train_loss=train_loss))
      if stop:
        preemption.exit_saved(step)
  finally:
    preemption_notice.close()
    progress.close()
    manager.close()
    for writer in writers:
      writer.close()
  return _finish(members, member_dirs, run, state, data_teacher, best_top1, last_eval, train_loss)


def _write_train(members, writers, pending, last_good_step, train_loss):
  """Each member's pending metrics to its own writer; a non-finite member stops the
  population with its name."""
  if not pending:
    return train_loss
  values = jax.device_get(pending)
  losses = list(train_loss)
  for i, (m, writer) in enumerate(zip(members, writers)):
    names = member_metric_names(m.config, values[0][1])
    member = [(step, {k: metrics[k][i] for k in names}) for step, metrics in values]
    try:
      losses[i] = writer.write_train(member, last_good_step)
    except metrics_io.NonFiniteLossError as e:
      raise metrics_io.NonFiniteLossError(f'Population member {m.name!r}: {e}') from None
  return losses


def _finish(members, member_dirs, run, state, teacher_variables, best_top1, last_eval, train_loss):
  """Each member's final model (scratch members keep theirs as a teacher) and results."""
  variables = fetch(state.variables())
  teachers = evaluate_teachers(members, run, teacher_variables) if run.teacher else {}
  out = []
  for i, (m, workdir) in enumerate(zip(members, member_dirs)):
    c = m.config
    if not _distilled(c):
      checkpoints.save_model(workdir / 'teacher', unstack(variables, i), step=run.total_steps,
                             **train._model_meta(c, run, top1=last_eval[i].get('top1')))  # pylint: disable=protected-access
    teacher_eval = teachers.get(m.name, {})
    results = dict(final_top1=last_eval[i].get('top1'), final_top5=last_eval[i].get('top5'),
                   best_top1=best_top1[i], final_train_loss=train_loss[i], steps=run.total_steps,
                   method=c.method, oracle=_oracle(c),
                   gamma=float(c.oracle.gamma) if _oracle(c) else None, dataset=c.dataset,
                   student=c.student.model, seed=c.seed,
                   teacher_top1=teacher_eval.get('teacher_top1'),
                   oracle_top1=teacher_eval.get('oracle_top1'),
                   **train.versus_reference(c.get('reference_top1'), best_top1[i]))
    if jax.process_index() == 0:
      fileio.write_json(workdir / 'results.json', results)
    out.append(results)
  return out
