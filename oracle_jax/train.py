"""The training loop: data → sharded distillation step → metrics, evaluation, checkpoints.

`train_and_evaluate(config, workdir)` trains the configured student (or, with
`method='scratch'`, a supervised model — how teachers are trained), resumes
automatically from the newest good checkpoint in `workdir`, saves on SIGTERM, and writes
`results.json`. A scratch run also keeps its final model in `workdir/teacher`.
"""
import functools
import logging
import math

import jax
import numpy as np

from oracle_jax import checkpoints, conv, data, fileio, methods, metrics_io, models, steps
from oracle_jax import optim, oracle, parallel, preemption, teachers, validation, workdirs


def model_kwargs(model_config, dtype, conv_impl=None):
  """`models.create`'s options for a config's model block; `conv_impl` from `conv.choose`."""
  return {'dtype': jax.numpy.dtype(dtype), 'conv_impl': conv_impl,
          **models.architecture(model_config)}


class Run:
  """What a run needs beyond the config: sizes, models, jitted steps. Built once."""

  def __init__(self, config, mesh, *, num_train=None):
    """`num_train`: the training split's size where known without reading the data
    (benchmarks on synthetic batches); by default counted from the dataset."""
    self.config, self.mesh = config, mesh
    self.spec = data.dataset_spec(config.dataset)
    self.data_dir = config.data_dir or None
    num_train = num_train or data.num_examples(self.spec, self.data_dir, 'train')
    if config.train_examples:
      num_train = min(num_train, config.train_examples)
    self.num_train = num_train
    self.steps_per_epoch = num_train / config.batch_size
    self.total_steps = config.train_steps or math.ceil(config.num_epochs * self.steps_per_epoch)
    self.lr_fn = optim.learning_rate_fn(config, self.steps_per_epoch, self.total_steps)
    self.tx = optim.make_optimizer(config, self.lr_fn)
    self.oracle_settings = oracle.Settings.from_config(config.oracle)
    # The convolution and the XLA options that go with it depend on the mesh ('auto').
    conv_impl, self.compiler_options = conv.choose(config.conv_impl, mesh.size,
                                                   image_shape=self.spec.image_shape)
    options_of = functools.partial(model_kwargs, dtype=config.dtype, conv_impl=conv_impl)
    self.student = models.create(config.student.model, self.spec.num_classes,
                                 **options_of(config.student))
    self.teacher = self.distiller = None
    if config.method != 'scratch':
      self.teacher = models.create(config.teacher.model, self.spec.num_classes,
                                   **options_of(config.teacher))
      self.distiller = methods.get(config)

  def init_state(self, seed):
    x = np.zeros((1, *self.spec.image_shape), np.float32)
    student_key, distiller_key = jax.random.split(jax.random.key(seed))
    if not hasattr(self, '_init'):  # compiled once per Run: seeds and population members share it
      # With the CPU options XLA compiles it 2.5x sooner (4.2 → 1.7 s), to the same values.
      self._init = jax.jit(self.student.init,  # pylint: disable=attribute-defined-outside-init
                           compiler_options=self.compiler_options or None)
    variables = self._init(student_key, x)
    distiller_params = {}
    if self.distiller is not None and self.distiller.needs_features:
      feats = lambda model, v: jax.eval_shape(
          lambda v: model.apply(v, x, return_features=True)[1], v)
      teacher_shapes = jax.eval_shape(self.teacher.init, jax.random.key(0), x)
      distiller_params = self.distiller.init_modules(
          distiller_key, feats(self.student, variables), feats(self.teacher, teacher_shapes))
    return steps.TrainState.create(variables, self.tx, distiller_params)

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
      self._teacher_eval = evaluate(self, step, teacher_variables)  # pylint: disable=attribute-defined-outside-init
    return self._teacher_eval


def evaluate(run, eval_step, variables):
  """Rates over the eval split of the sums `eval_step` returns (`correct_<name>` →
  `<name>`, `loss_sum` → `loss`); every example counted once, padding masked."""
  it = data.eval_iterator(run.spec, data_dir=run.data_dir,
                          global_batch_size=run.config.eval_batch_size)
  totals = None
  for batch in parallel.prefetch_to_devices(it, run.mesh):
    sums = eval_step(variables, batch)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  totals = jax.device_get(totals)
  n = int(totals.pop('count'))
  rates = {k.replace('correct_', '').replace('loss_sum', 'loss'): float(v) / n
           for k, v in totals.items()}
  return {**rates, 'examples': n}


def _first_checked(host_batches, spec):
  """`host_batches`, the first one checked (shapes, dtypes, labels) before any step."""
  first = next(host_batches)
  validation.check_batch(first, spec)
  yield first
  yield from host_batches


def _every(step, period, total):
  return step == total or (period > 0 and step % period == 0)


def load_teacher_variables(config, run):
  if config.method == 'scratch':
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
  out = dict(dataset=config.dataset, train_examples=run.num_train, method=config.method,
             oracle=bool(config.oracle.enabled) and config.method != 'scratch',
             student=config.student.model, student_params=count(run.student),
             steps=run.total_steps, epochs=round(run.total_steps / run.steps_per_epoch, 3),
             global_batch=config.batch_size, devices=run.mesh.devices.size,
             processes=jax.process_count(), per_device_batch=config.batch_size // run.mesh.devices.size)
  if run.teacher is not None:
    out.update(teacher=config.teacher.model, teacher_params=count(run.teacher),
               teacher_checkpoint=config.teacher.checkpoint)
  return out


def train_and_evaluate(config, workdir, *, run=None, mesh=None):
  """Trains per `config` in `workdir` (resuming if it holds a run); returns the results.

  `run` (a `Run` built for an equivalent config) lets callers reuse compiled steps
  across seeds, as the offline default does; `mesh` defaults to all devices.
  """
  run, teacher_variables = prepare(config, run=run, mesh=mesh)
  workdir = fileio.path(workdir)
  with workdirs.exclusive(workdir):  # only now: bad input writes nothing
    return _train_and_evaluate(config, workdir, run, teacher_variables)


def _train_and_evaluate(config, workdir, run, teacher_variables):
  workdirs.prepare(config, workdir)
  mesh = run.mesh
  manager = checkpoints.TrainCheckpoints(workdir / 'checkpoints',
                                         keep=config.keep_checkpoints)
  state = parallel.replicate(run.init_state(config.seed), mesh)
  state, meta = manager.restore_latest(state)
  best_top1 = meta.get('best_top1', 0.0)
  start = int(state.step)
  train_step, eval_step = run.jitted(state)
  writer = metrics_io.MetricWriter(workdir, start, tensorboard=config.tensorboard)
  if start:
    logging.warning('Resuming from step %d in %s', start, workdir)

  train_iter = data.train_iterator(run.spec, data_dir=run.data_dir,
                                   global_batch_size=config.batch_size, seed=config.seed,
                                   start_step=start, train_examples=config.train_examples)
  train_batches = parallel.prefetch_to_devices(_first_checked(train_iter, run.spec), mesh)
  eval_every = int(round(config.eval_every_epochs * run.steps_per_epoch))
  pending = []  # device metrics not yet fetched: fetched at log/checkpoint time only
  last_eval, train_loss = meta.get('last_eval', {}), meta.get('train_loss', float('nan'))
  preemption_notice = preemption.Notice(start)  # every process stops at the same step
  progress = metrics_io.Progress(run.total_steps, start, config.batch_size, enabled=jax.process_index() == 0)
  key = jax.random.key(config.seed)
  try:
    for step in range(start + 1, run.total_steps + 1):
      batch = next(train_batches)
      state, metrics = train_step(state, teacher_variables, batch, jax.random.fold_in(key, step))
      pending.append((step, metrics))
      stop = preemption_notice.reached(step)
      if _every(step, config.log_every_steps, run.total_steps) or stop:
        train_loss = writer.write_train(pending, manager.latest_step()) or train_loss
        pending = []
        progress.update(step)
      if _every(step, eval_every, run.total_steps):
        last_eval = evaluate(run, eval_step, state.variables())
        writer.write_eval(step, last_eval)
        if last_eval['top1'] > best_top1:
          best_top1 = last_eval['top1']
          checkpoints.save_model(workdir / 'best', jax.device_get(state.variables()),
                                 step=step, **_model_meta(config, run, top1=best_top1))
      if _every(step, config.checkpoint_every_steps, run.total_steps) or stop:
        # Check pending metrics first: a non-finite step must never be checkpointed.
        train_loss = writer.write_train(pending, manager.latest_step()) or train_loss
        pending = []
        manager.save(step, state, dict(best_top1=best_top1, last_eval=last_eval,
                                       train_loss=train_loss))
      if stop:
        preemption.exit_saved(step)
  finally:  # on any exit, finish the saves in flight: the last good checkpoint survives
    preemption_notice.close()
    progress.close()
    manager.close()
    writer.close()
  if config.method == 'scratch':
    checkpoints.save_model(workdir / 'teacher', jax.device_get(state.variables()),
                           step=run.total_steps, **_model_meta(config, run, top1=last_eval.get('top1')))
  teacher_eval = run.evaluate_teacher(teacher_variables) if run.teacher is not None else {}
  oracle_on = bool(config.oracle.enabled) and config.method != 'scratch'
  results = dict(final_top1=last_eval.get('top1'), final_top5=last_eval.get('top5'),
                 best_top1=best_top1, final_train_loss=train_loss, steps=run.total_steps,
                 method=config.method, oracle=oracle_on,
                 gamma=float(config.oracle.gamma) if oracle_on else None, dataset=config.dataset, student=config.student.model, seed=config.seed,
                 teacher_top1=teacher_eval.get('teacher_top1'),
                 oracle_top1=teacher_eval.get('oracle_top1'),
                 **versus_reference(config.get('reference_top1'), best_top1))
  if jax.process_index() == 0:
    fileio.write_json(workdir / 'results.json', results)
  return results


def versus_reference(reference_top1, best_top1):
  """`reference_top1` (%, the published figure the config reproduces) and `delta_top1`
  (our best top-1 minus it, in points); nothing when the config names none."""
  if not reference_top1:
    return {}
  return dict(reference_top1=reference_top1, delta_top1=round(100 * best_top1 - reference_top1, 2))


def _model_meta(config, run, **extra):
  return dict(model=config.student.model, num_classes=run.spec.num_classes,
              dataset=config.dataset, **models.architecture(config.student), **extra)
