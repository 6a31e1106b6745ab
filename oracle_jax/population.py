"""Populations: P students of one teacher trained as one jitted program over a member
axis (`over_members`: `jax.vmap`, or `lax.map` on one CPU device), by the loop of a
single run (`train.fit`, with `Population` as its program).

Members share the models, teacher, data, schedule and one distillation method, plus
scratch members (`compatibility_key`); each may choose its seed, the oracle and γ, its CE
weight, learning-rate scale and the method's weights (`methods.MEMBER_FIELDS`), passed as
arrays. Members of one seed share a batch and the teacher's work on it (`plan`). Each
member computes its sequential run's arithmetic: on one device its parameters, metrics
and results are that run's bit for bit. Several devices split the members (`make_mesh`);
several processes each read every member's whole batches (a dataset held in memory).
"""
import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oracle_jax import conv, data, errors, methods, metrics_io, models, optim, oracle, parallel
from oracle_jax import patch_conv, steps, train, validation

# Settings a member may choose freely; every other config key must agree across members
# (`check_members` also requires one distilled method).
MEMBER_KEYS = ('seed', 'method', 'oracle.enabled', 'oracle.gamma', 'ce_weight',
               'optimizer.learning_rate', 'overwrite',
               *dict.fromkeys(key for fields in methods.MEMBER_FIELDS.values()
                              for key in fields.values()))
# What a scratch member logs (its sequential run has no teacher and no distillation terms).
SCRATCH_METRICS = ('ce', 'loss', 'accuracy', 'grad_norm', 'learning_rate')


Member = train.Member  # (name, config, workdir): one member of the loop


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
  return (config.method in methods.CHOICES and config.grad_accum_steps == 1
          and (jax.process_count() == 1 or not data.spec_for(config).streamed))


def distilled_method(configs):
  """The method the distilled members of `configs` share (None if all are scratch)."""
  return next((c.method for c in configs if methods.is_distilled(c)), None)


def member_fields(configs):
  """{distiller field: f32[P]}: each member's value of the traced fields of the shared
  method (`methods.MEMBER_FIELDS`), as its sequential run's distiller holds it; a scratch
  member takes the first distilled member's, its loss weights 0."""
  method = distilled_method(configs)
  if method is None:
    return {}
  reference = methods.get(next(c for c in configs if methods.is_distilled(c)))
  def value(config, field):
    if methods.is_distilled(config):
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
  plain_members = [c for c in configs if methods.is_distilled(c) and not methods.uses_oracle(c)]
  oracles = [c for c in configs if methods.uses_oracle(c)]
  plain = list(dict.fromkeys(batch_of(c) for c in plain_members))
  grad = list(dict.fromkeys(batch_of(c) for c in oracles))
  signals = list(dict.fromkeys((batch_of(c), float(c.oracle.gamma)) for c in oracles))
  # A member's rows: its distillation target and its teacher-on-x logits (for metrics).
  # Scratch members read row 0, a target (features included) whenever a teacher exists,
  # and weight it 0.
  target_rows, x_rows = [], []
  for c in configs:
    if methods.uses_oracle(c):
      target_rows.append(len(plain) + signals.index((batch_of(c), float(c.oracle.gamma))))
      x_rows.append(len(plain) + len(signals) + grad.index(batch_of(c)))
    else:
      row = plain.index(batch_of(c)) if methods.is_distilled(c) else 0
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
      ce_weight=f32([c.ce_weight if methods.is_distilled(c) else 1.0 for c in configs]),
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
    which = arrays['oracle_gradient']  # each (batch, γ)'s row of those gradients
    gamma = arrays['oracle_gamma'].reshape(-1, *([1] * (x.ndim - 1)))
    x_star = oracle.iterate(lambda x_k: each(gradient, x_k, labels_g[which])[0],
                            x_g[which], grads[which], gamma=gamma, steps=oracle_steps)
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
  slower per member than single ones, benchmarks/README.md), while `lax.map` keeps
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
  if not methods.is_distilled(config):
    return [n for n in names if n in SCRATCH_METRICS]
  return [n for n in names if n != 'oracle_accuracy' or methods.uses_oracle(config)]


# ------------------------------------------------------------------------- devices, jit

def member_conv(config, spec, device_count):
  """The convolution of a population's models: the one `config.conv_impl` chooses, as for
  a sequential run (on one CPU device 'auto' is `patch_conv` for the digits, so each
  member computes its sequential run's arithmetic). On several CPU devices tiny images
  keep `patch_conv` too: vmapped, XLA's CPU convolutions become grouped convolutions
  slower than alone, inside `lax.map` the stock ones too (benchmarks/README.md). The
  parameters are the same whatever the convolution."""
  conv_impl, _ = conv.choose(config.conv_impl, device_count, image_shape=spec.image_shape)
  if (jax.default_backend() == 'cpu' and conv.patch_sized(spec.image_shape)
      and config.conv_impl == 'auto'):
    conv_impl = patch_conv.patch_conv
  return conv_impl


def member_model(model_config, config, spec, device_count):
  """The student (or teacher) model of a population (`member_conv`'s convolution)."""
  return models.create(model_config.model, spec.num_classes, **train.model_kwargs(
      model_config, config.dtype, member_conv(config, spec, device_count)))


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
                       f'population: methods {methods.CHOICES}, grad_accum_steps 1, on several processes '
                       'a dataset held in memory (not a streamed one).')
  distilled = [m for m in members if methods.is_distilled(m.config)]
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


def evaluate_teachers(members, run, teacher_variables):
  """[teacher top-1 on x and x*, per member] as each member's sequential run reports it.
  Every distinct evaluation (plain, or the oracle at each γ) runs in one program over one
  pass of the eval split, each as `steps.teacher_eval_step` computes it."""
  key = lambda c: (float(c.oracle.gamma) if methods.uses_oracle(c) else None)
  settings = {}
  for m in members:
    if methods.is_distilled(m.config):
      settings.setdefault(key(m.config), dataclasses.replace(
          oracle.Settings.from_config(m.config.oracle), enabled=methods.uses_oracle(m.config)))

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
  return [by_key[key(m.config)] if methods.is_distilled(m.config) else {} for m in members]


class Population:
  """A population as the training loop (`train.fit`) sees it: `train.SingleRun`'s
  interface over a member axis. Built once: checks, models, teacher, jitted steps."""
  resuming = 'Resuming the population from step %d in %s'

  def __init__(self, members, mesh=None):
    check_members(members)
    self.members = members
    configs = [m.config for m in members]
    for c in configs:
      validation.validate_config(c)
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
    # The teacher, data and schedule come from a distilled member's config when one exists.
    self.config = config = next((c for c in configs if methods.is_distilled(c)), configs[0])
    spec = data.spec_for(config)
    self.run, self._data_teacher = train.prepare(config, run=train.Run(
        config, parallel.make_mesh(devices), conv_impl=member_conv(config, spec, len(devices))))
    self.mesh = make_mesh(len(members), devices)
    parallel.check_batch_size(config.batch_size, Mesh(self.mesh.devices[0], ('data',)))
    self.images_per_step = config.batch_size * len(members)
    self._seeds, arrays = plan(configs, config.optimizer.learning_rate)
    self._arrays = parallel.replicate(arrays, self.mesh)
    self._teacher_variables = (parallel.replicate(self._data_teacher, self.mesh)
                               if self.run.teacher else {})
    self._step, self._eval_step = self._jit_steps()

  def _jit_steps(self):
    run, config = self.run, self.config
    train_step = jit_population_step(
        self.mesh, run.compiler_options, student=run.student, teacher=run.teacher,
        distiller=run.distiller, spec=run.spec, learning_rate_fn=run.lr_fn,
        make_optimizer=functools.partial(optim.make_optimizer, config),
        steps_per_epoch=run.steps_per_epoch, oracle_steps=config.oracle.steps,
        reference_batch_size=config.oracle.reference_batch_size,
        label_smoothing=config.label_smoothing,
        member_loop=member_loop_for(self.mesh, run.distiller))
    eval_step = jit_population_eval(self.mesh, run.compiler_options, member_loop_for(self.mesh),
                                    model=run.student, spec=run.spec)
    return train_step, eval_step

  def initial_state(self, resuming=False):
    """Each member's state from its seed (and, unless `resuming`, from the members' shared
    `init_checkpoint`: one read, every member's fresh classifier its own seed's)."""
    init_checkpoint = '' if resuming else self.config.init_checkpoint
    return put(stack([self.run.init_state(m.config.seed, init_checkpoint)
                      for m in self.members]), member_sharding(self.mesh))

  def start_step(self, state):
    return int(fetch(state.step)[0])

  def train_batches(self, start):
    """Each step's distinct batches (one per seed) stacked, whole on every process."""
    run, config = self.run, self.config
    iterators = [validation.first_checked(data.train_iterator(
        run.spec, data_dir=run.data_dir, global_batch_size=config.batch_size, seed=seed,
        start_step=start, train_examples=config.train_examples, whole_batches=True), run.spec)
                 for seed in self._seeds]
    sharding = NamedSharding(self.mesh, P(None, 'data'))
    for host in zip(*iterators):
      yield put({k: np.stack([b[k] for b in host]) for k in ('image', 'label')}, sharding)

  def train_step(self, state, batch, step):
    del step  # the bundled models draw no randomness
    return self._step(state, self._teacher_variables, batch, self._arrays)

  def evaluate(self, state):
    """Per-member rates over the eval split (as `train.evaluate`, with a member axis)."""
    run, split, batch_size = self.run, self.run.spec.eval_split, self.config.eval_batch_size
    batches = data.eval_iterator(run.spec, data_dir=run.data_dir, global_batch_size=batch_size,
                                 split=split, whole_batches=True)
    sharding = NamedSharding(self.mesh, P('data'))
    totals = None
    for batch in metrics_io.counted(batches, data.num_examples(run.spec, run.data_dir, split),
                                    batch_size, desc='eval'):
      sums = self._eval_step(state.variables(), put(batch, sharding))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return [train.rates(unstack(totals, i)) for i in range(len(self.members))]

  def member_metrics(self, metrics, index):
    names = member_metric_names(self.members[index].config, metrics)
    return {k: metrics[k][index] for k in names}

  def member_variables(self, state):
    variables = fetch(state.variables())
    return [unstack(variables, i) for i in range(len(self.members))]

  def teacher_evaluations(self):
    if self.run.teacher is None:
      return [{} for _ in self.members]
    return evaluate_teachers(self.members, self.run, self._data_teacher)


def train_population(members, directory, *, mesh=None):
  """Trains `members` (a list of `Member`) as one population, resuming from the newest
  checkpoint in `directory`; returns each member's results (as `train.train_and_evaluate`
  returns them), in order, and writes each member's `results.json`."""
  return train.fit(Population(members, mesh), members, directory)
