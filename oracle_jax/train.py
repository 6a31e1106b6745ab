"""The training loop: data → sharded step → metrics, evaluation, checkpoints, results.

`train_and_evaluate(config, workdir)` trains the configured student (or, with
`method='scratch'`, a supervised model — how teachers are trained), from random weights
or `config.init_checkpoint`'s (`finetune`), resumes from the newest good checkpoint in
`workdir` (never reading `init_checkpoint` then), saves on SIGTERM, and writes
`results.json`; a scratch run also keeps its final model in `workdir/teacher`. `fit` is the loop itself,
written over a list of members: a single run is a population of one (`SingleRun`), a
population (`population.Population`) brings its own step, batches and evaluation.
"""
import contextlib
import dataclasses
import functools
import logging
import math
from typing import Any

import jax
import numpy as np

from oracle_jax import checkpoints, conv, data, fileio, finetune, methods, metrics_io, models
from oracle_jax import optim, oracle, parallel, preemption, steps, teachers, validation
from oracle_jax import workdirs


def model_kwargs(model_config, dtype, conv_impl=None):
  """`models.create`'s options for a config's model block; `conv_impl` from `conv.choose`."""
  return {'dtype': jax.numpy.dtype(dtype), 'conv_impl': conv_impl,
          **models.architecture(model_config)}


class Run:
  """What a run needs beyond the config: sizes, models, jitted steps. Built once."""

  def __init__(self, config, mesh, *, conv_impl=None, num_train=None):
    """`conv_impl`: a convolution to build the models with instead of `config.conv_impl`'s
    choice for `mesh` (a population's, `population.member_conv`); `num_train`: the
    training split's size where known without reading the data (benchmarks on synthetic
    batches); by default counted from the dataset."""
    self.config, self.mesh = config, mesh
    self.spec = data.spec_for(config)
    self.data_dir = config.data_dir or None
    num_train = num_train or data.num_examples(self.spec, self.data_dir, 'train')
    if config.train_examples > num_train:
      raise validation.ConfigError(
          f'train_examples={config.train_examples} is more than the {num_train} training '
          f'examples of {config.dataset}; set it to at most {num_train} (0 = all).')
    num_train = config.train_examples or num_train
    self.num_train = num_train
    self.steps_per_epoch = num_train / config.batch_size
    self.total_steps = config.train_steps or math.ceil(config.num_epochs * self.steps_per_epoch)
    self.lr_fn = optim.learning_rate_fn(config, self.steps_per_epoch, self.total_steps)
    self.tx = optim.make_optimizer(config, self.lr_fn)
    self.oracle_settings = oracle.Settings.from_config(config.oracle)
    # The convolution and the XLA options that go with it depend on the mesh ('auto').
    chosen, self.compiler_options = conv.choose(config.conv_impl, mesh.size,
                                                image_shape=self.spec.image_shape)
    conv_impl = conv_impl or chosen
    options_of = functools.partial(model_kwargs, dtype=config.dtype, conv_impl=conv_impl)
    self.student = models.create(config.student.model, self.spec.num_classes,
                                 **options_of(config.student))
    self.teacher = self.distiller = None
    if methods.is_distilled(config):
      self.teacher = models.create(config.teacher.model, self.spec.num_classes,
                                   **options_of(config.teacher))
      self.distiller = methods.get(config)

  def init_state(self, seed, init_checkpoint=''):
    """The train state of `seed`'s initialisation; with `init_checkpoint`, the student's
    weights taken from that checkpoint (`finetune`), the optimizer's state fresh."""
    x = np.zeros((1, *self.spec.image_shape), np.float32)
    student_key, distiller_key = jax.random.split(jax.random.key(seed))
    if not hasattr(self, '_init'):  # compiled once per Run: seeds and population members share it
      # With the CPU options XLA compiles it sooner, to the same values (benchmarks/README.md).
      self._init = jax.jit(self.student.init,  # pylint: disable=attribute-defined-outside-init
                           compiler_options=self.compiler_options or None)
    variables = self._init(student_key, x)
    if init_checkpoint:
      variables = finetune.start_from(variables, self.start_variables(init_checkpoint))
    distiller_params = {}
    if self.distiller is not None and self.distiller.needs_features:
      feats = lambda model, v: jax.eval_shape(
          lambda v: model.apply(v, x, return_features=True)[1], v)
      teacher_shapes = jax.eval_shape(self.teacher.init, jax.random.key(0), x)
      distiller_params = self.distiller.init_modules(
          distiller_key, feats(self.student, variables), feats(self.teacher, teacher_shapes))
    return steps.TrainState.create(variables, self.tx, distiller_params)

  def start_variables(self, init_checkpoint):
    """The student's variables from `init_checkpoint` (`finetune.read`), read once per Run:
    its seeds and population members share them."""
    if not hasattr(self, '_start_variables'):
      self._start_variables = {}  # pylint: disable=attribute-defined-outside-init
    if init_checkpoint not in self._start_variables:
      self._start_variables[init_checkpoint] = finetune.read(init_checkpoint,
                                                             self.config.student, self.spec)
    return self._start_variables[init_checkpoint]

  def jitted(self, state):
    """(train_step, eval_step), compiled on first use and kept for this Run."""
    if not hasattr(self, '_steps'):
      sharding = jax.tree.map(lambda _: parallel.replicated(self.mesh), state)
      train = steps.jit_train_step(
          self.mesh, sharding, config=self.config, oracle_settings=self.oracle_settings,
          student=self.student, teacher=self.teacher, spec=self.spec,
          learning_rate_fn=self.lr_fn, distiller=self.distiller,
          steps_per_epoch=self.steps_per_epoch, compiler_options=self.compiler_options)
      evaluate = steps.jit_eval_step(steps.eval_step, self.mesh, model=self.student,
                                     spec=self.spec, compiler_options=self.compiler_options)
      self._steps = (train, evaluate)  # pylint: disable=attribute-defined-outside-init
    return self._steps

  def evaluate_teacher(self, teacher_variables):
    """The frozen teacher's top-1 on x and (oracle on) on x* over the eval split. Computed
    once per Run: the runs sharing a Run (a sweep's seeds) share the teacher."""
    if not hasattr(self, '_teacher_eval'):
      step = steps.jit_eval_step(steps.teacher_eval_step, self.mesh,
                                 oracle_settings=self.oracle_settings, teacher=self.teacher,
                                 spec=self.spec, compiler_options=self.compiler_options)
      self._teacher_eval = evaluate(self, step, teacher_variables, desc='teacher eval')  # pylint: disable=attribute-defined-outside-init
    return self._teacher_eval


def evaluate(run, eval_step, variables, desc='eval'):
  """Rates over the eval split of the sums `eval_step` returns (`correct_<name>` →
  `<name>`, `loss_sum` → `loss`); every example counted once, padding masked. A bar
  named `desc` counts the examples (summing on the host waits for each batch anyway)."""
  split, batch_size = run.spec.eval_split, run.config.eval_batch_size
  it = data.eval_iterator(run.spec, data_dir=run.data_dir, global_batch_size=batch_size,
                          split=split)
  totals = None
  for batch in metrics_io.counted(parallel.prefetch_to_devices(it, run.mesh),
                                  data.num_examples(run.spec, run.data_dir, split),
                                  batch_size, desc=desc):
    sums = eval_step(variables, batch)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  return rates(jax.device_get(totals))


def rates(totals):
  """Host sums of an evaluation (`correct_<name>`, `loss_sum`, `count`) as rates
  (`<name>`, `loss`) and the number of `examples`."""
  n = int(totals['count'])
  out = {k.replace('correct_', '').replace('loss_sum', 'loss'): float(v) / n
         for k, v in totals.items() if k != 'count'}
  return {**out, 'examples': n}


def load_teacher_variables(config, run):
  if not methods.is_distilled(config):
    return {}
  return parallel.replicate(teachers.load_variables(config, run.spec), run.mesh)


def prepare(config, *, run=None, mesh=None):
  """Every check that needs no training: config, devices, data, teacher. Returns
  `(run, teacher_variables)`; raises the user-facing errors before anything is written."""
  validation.validate_config(config)
  mesh = run.mesh if run else (mesh or parallel.make_mesh())
  parallel.check_batch_size(config.batch_size, mesh, config.grad_accum_steps)
  parallel.check_batch_size(config.eval_batch_size, mesh)
  run = run or Run(config, mesh)
  return run, load_teacher_variables(config, run)


def plan(config, run):
  """What a run will do, for --dry_run: sizes, steps, epochs, batch, devices."""
  count = lambda model: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(
      jax.eval_shape(model.init, jax.random.key(0),
                     np.zeros((1, *run.spec.image_shape), np.float32))['params']))
  spec = run.spec
  out = dict(dataset=config.dataset, train_examples=run.num_train,
             eval_split=spec.eval_split,
             eval_examples=data.num_examples(spec, run.data_dir, spec.eval_split),
             num_classes=spec.num_classes, **data.record(spec), augment=spec.augment,
             streamed=spec.streamed, method=config.method,
             oracle=methods.uses_oracle(config),
             student=config.student.model, student_params=count(run.student),
             steps=run.total_steps, epochs=round(run.total_steps / run.steps_per_epoch, 3),
             global_batch=config.batch_size, devices=run.mesh.devices.size,
             processes=jax.process_count(), per_device_batch=config.batch_size // run.mesh.devices.size)
  if run.teacher is not None:
    out.update(teacher=config.teacher.model, teacher_params=count(run.teacher),
               teacher_checkpoint=config.teacher.checkpoint)
  if config.init_checkpoint:  # read and checked as a new run would read it
    run.start_variables(config.init_checkpoint)
    out.update(init_checkpoint=config.init_checkpoint)
  return out


def train_and_evaluate(config, workdir, *, run=None, mesh=None):
  """Trains per `config` in `workdir` (resuming if it holds a run); returns the results.

  `run` (a `Run` built for an equivalent config) lets callers reuse compiled steps
  across seeds, as the offline default does; `mesh` defaults to all devices.
  """
  run, teacher_variables = prepare(config, run=run, mesh=mesh)
  return fit(SingleRun(run, config, teacher_variables), [Member(None, config, workdir)],
             workdir)[0]


@dataclasses.dataclass(frozen=True)
class Member:
  name: Any       # how a population's errors name the member, e.g. 'oracle_kd_seed3'; None alone
  config: Any     # the member's whole config: the one its own run would use
  workdir: Any    # its metrics, best/, teacher/ (scratch) and results.json


class SingleRun:
  """One run as the loop (`fit`) sees it: a population of one member. The interface a
  population implements too: `config` (the schedule), `run`, `images_per_step`, and the
  methods below; per-member values are lists in the members' order."""
  resuming = 'Resuming from step %d in %s'  # the log line of a resumed run

  def __init__(self, run, config, teacher_variables):
    self.run, self.config, self.teacher_variables = run, config, teacher_variables
    self.images_per_step = config.batch_size
    self._key = jax.random.key(config.seed)

  def initial_state(self, resuming=False):
    """The state to start from (`config.init_checkpoint`'s weights unless `resuming`) or,
    `resuming`, the target a checkpoint restores onto."""
    init_checkpoint = '' if resuming else self.config.init_checkpoint
    return parallel.replicate(self.run.init_state(self.config.seed, init_checkpoint),
                              self.run.mesh)

  def start_step(self, state):
    return int(state.step)

  def train_batches(self, start):
    it = data.train_iterator(self.run.spec, data_dir=self.run.data_dir,
                             global_batch_size=self.config.batch_size, seed=self.config.seed,
                             start_step=start, train_examples=self.config.train_examples)
    return parallel.prefetch_to_devices(validation.first_checked(it, self.run.spec),
                                        self.run.mesh)

  def train_step(self, state, batch, step):
    train_step, _ = self.run.jitted(state)
    return train_step(state, self.teacher_variables, batch, jax.random.fold_in(self._key, step))

  def evaluate(self, state):
    _, eval_step = self.run.jitted(state)
    return [evaluate(self.run, eval_step, state.variables())]

  def member_metrics(self, metrics, index):
    del index
    return metrics

  def member_variables(self, state):
    return [jax.device_get(state.variables())]

  def teacher_evaluations(self):
    if self.run.teacher is None:
      return [{}]
    return [self.run.evaluate_teacher(self.teacher_variables)]


def fit(program, members, directory):
  """Trains `members` with `program` (`SingleRun` or `population.Population`), resuming
  from the newest checkpoint in `directory/checkpoints`; writes each member's metrics,
  best model and `results.json` in its workdir and returns their results, in order."""
  directory = fileio.path(directory)
  member_dirs = [fileio.path(m.workdir) for m in members]
  _read_init_checkpoint(program, directory)
  with contextlib.ExitStack() as locks:  # only now: bad input writes nothing
    for d in dict.fromkeys(str(d) for d in [directory, *member_dirs]):
      locks.enter_context(workdirs.exclusive(fileio.path(d)))
    for m, d in zip(members, member_dirs):
      workdirs.prepare(m.config, d)
    return _loop(program, members, member_dirs, directory)


def _read_init_checkpoint(program, directory):
  """Reads and checks a new run's `init_checkpoint` (the Run keeps it) before anything is
  written, so that one that does not fit leaves nothing behind. A workdir with training
  checkpoints resumes from them: `_loop` decides, and reads it only if none is there."""
  source = program.config.init_checkpoint
  if source and not (directory / 'checkpoints').exists():
    program.run.start_variables(source)


def _per_member(saved, size, default):
  """A checkpoint's per-member value as a list (a single run's older checkpoints hold
  the value itself)."""
  if saved is None:
    return [default] * size
  return list(saved) if isinstance(saved, list) else [saved]


def _loop(program, members, member_dirs, directory):
  config, run = program.config, program.run
  manager = checkpoints.TrainCheckpoints(directory / 'checkpoints', keep=config.keep_checkpoints)
  # A run resuming from its own checkpoint never reads config.init_checkpoint.
  resuming = manager.latest_step() is not None
  state, meta = manager.restore_latest(program.initial_state(resuming))
  start = program.start_step(state)
  if start:
    logging.warning(program.resuming, start, directory)
  size = len(members)
  best_top1 = _per_member(meta.get('best_top1'), size, 0.0)
  last_eval = _per_member(meta.get('last_eval'), size, {})
  train_loss = _per_member(meta.get('train_loss'), size, float('nan'))
  writers = [metrics_io.MetricWriter(d, start, tensorboard=config.tensorboard)
             for d in member_dirs]
  batches = program.train_batches(start)
  eval_every = int(round(config.eval_every_epochs * run.steps_per_epoch))
  pending = []  # device metrics not yet fetched: fetched at log/checkpoint time only
  preemption_notice = preemption.Notice(start)  # every process stops at the same step
  progress = metrics_io.Progress(run.total_steps, start, program.images_per_step)
  throughput = metrics_io.Throughput(writers, run.total_steps, program.images_per_step,
                                     config.log_every_steps)
  every = lambda step, period: step == run.total_steps or (period > 0 and step % period == 0)

  def flush():  # a non-finite step raises here, before it is ever checkpointed
    nonlocal pending, train_loss
    train_loss = _write_train(program, members, writers, pending, manager.latest_step(),
                              train_loss)
    pending = []

  try:
    for step in range(start + 1, run.total_steps + 1):
      state, metrics = program.train_step(state, next(batches), step)
      pending.append((step, metrics))
      throughput(step)  # host time only: steps/s and img/s every log interval
      progress.update(step)  # steps dispatched: moves at every step, syncs nothing
      stop = preemption_notice.reached(step)
      if every(step, config.log_every_steps) or stop:
        flush()
      if every(step, eval_every):
        last_eval = _evaluate(program, members, member_dirs, writers, state, step, best_top1)
      if every(step, config.checkpoint_every_steps) or stop:
        flush()
        manager.save(step, state, dict(members=[m.name for m in members],
                                       best_top1=list(best_top1), last_eval=list(last_eval),
                                       train_loss=list(train_loss)))
      if stop:
        preemption.exit_saved(step)
  finally:  # on any exit, finish the saves in flight: the last good checkpoint survives
    preemption_notice.close()
    progress.close()
    manager.close()
    for writer in writers:
      writer.close()
  return _finish(program, members, member_dirs, state, best_top1, last_eval, train_loss)


def _evaluate(program, members, member_dirs, writers, state, step, best_top1):
  """Every member's evaluation, logged; a member that beats its `best_top1` (updated in
  place) keeps this model in `best/`."""
  results = program.evaluate(state)
  variables = None  # fetched once, and only when some member improved
  for i, (m, writer) in enumerate(zip(members, writers)):
    writer.write_eval(step, results[i])
    if results[i]['top1'] > best_top1[i]:
      best_top1[i] = results[i]['top1']
      variables = variables or program.member_variables(state)
      checkpoints.save_model(member_dirs[i] / 'best', variables[i], step=step,
                             **_model_meta(m.config, program.run, top1=best_top1[i]))
  return results


def _write_train(program, members, writers, pending, last_good_step, train_loss):
  """Each member's pending metrics to its own writer; returns each one's mean loss. A
  non-finite member stops the run, named when it is a population's."""
  if not pending:
    return train_loss
  values = jax.device_get(pending)
  losses = list(train_loss)
  for i, (m, writer) in enumerate(zip(members, writers)):
    member = [(step, program.member_metrics(metrics, i)) for step, metrics in values]
    try:
      losses[i] = writer.write_train(member, last_good_step)
    except metrics_io.NonFiniteLossError as e:
      if m.name is None:
        raise
      raise metrics_io.NonFiniteLossError(f'Population member {m.name!r}: {e}') from None
  return losses


def _finish(program, members, member_dirs, state, best_top1, last_eval, train_loss):
  """Each member's final model (a scratch run keeps its own as a teacher) and results."""
  run = program.run
  teacher_evals = program.teacher_evaluations()
  variables = None
  out = []
  for i, (m, workdir) in enumerate(zip(members, member_dirs)):
    c = m.config
    if not methods.is_distilled(c):
      variables = variables or program.member_variables(state)
      checkpoints.save_model(workdir / 'teacher', variables[i], step=run.total_steps,
                             **_model_meta(c, run, top1=last_eval[i].get('top1')))
    results = results_record(c, run.total_steps, last_eval[i], best_top1[i], train_loss[i],
                             teacher_evals[i], run.spec)
    if jax.process_index() == 0:
      fileio.write_json(workdir / 'results.json', results)
    out.append(results)
  return out


def results_record(config, total_steps, last_eval, best_top1, train_loss, teacher_eval,
                   spec):
  """What `results.json` holds for one run."""
  oracle_on = methods.uses_oracle(config)
  return dict(final_top1=last_eval.get('top1'), final_top5=last_eval.get('top5'),
              best_top1=best_top1, final_train_loss=train_loss, steps=total_steps,
              method=config.method, oracle=oracle_on,
              gamma=float(config.oracle.gamma) if oracle_on else None, dataset=config.dataset,
              student=config.student.model, seed=config.seed,
              init_checkpoint=config.get('init_checkpoint') or None,
              teacher_top1=teacher_eval.get('teacher_top1'),
              oracle_top1=teacher_eval.get('oracle_top1'), **data.record(spec),
              **versus_reference(config.get('reference_top1'), best_top1))


def versus_reference(reference_top1, best_top1):
  """`reference_top1` (%, the published figure the config reproduces) and `delta_top1`
  (our best top-1 minus it, in points); nothing when the config names none."""
  if not reference_top1:
    return {}
  return dict(reference_top1=reference_top1, delta_top1=round(100 * best_top1 - reference_top1, 2))


def _model_meta(config, run, **extra):
  return dict(model=config.student.model, num_classes=run.spec.num_classes,
              dataset=config.dataset, **data.record(run.spec),
              **models.architecture(config.student), **extra)
