"""Step B of oracle distillation: the student's train state and the pure train/eval steps.

`train_step(state, teacher_variables, batch, rng) -> (state, metrics)` is jitted once
over the device mesh. The teacher's variables are a separate, frozen argument: the
optimizer never sees them and no gradient reaches them (the loss is differentiated with
respect to the student's parameters only).
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from oracle_jax import data, losses, oracle, parallel


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any            # the student's parameters
  batch_stats: Any       # the student's BatchNorm running statistics (not optimizer state)
  distiller_params: Any  # trainable modules of a distiller (FitNet regressor, SAD), or {}
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, variables, tx, distiller_params=None):
    distiller_params = distiller_params or {}
    trainable = {'student': variables['params'], 'distiller': distiller_params}
    return cls(step=jnp.zeros((), jnp.int32), params=variables['params'],
               batch_stats=variables.get('batch_stats', {}), distiller_params=distiller_params,
               opt_state=tx.init(trainable), tx=tx)

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def trainable(self):
    """What the optimizer updates: the student and the distiller's own modules."""
    return {'student': self.params, 'distiller': self.distiller_params}


def teacher_signal(oracle_settings, teacher, teacher_variables, x, labels, with_features):
  """Teacher logits (and features) on x* (oracle on) or x, plus accuracy metrics.

  With the oracle on, every teacher signal — logits and features — comes from one
  teacher pass on x*; the student still sees x.
  """
  logits_fn = functools.partial(teacher.apply, teacher_variables, train=False)
  teacher_input, metrics = x, {}
  if oracle_settings.enabled:
    teacher_input, logits_x = oracle.reinforce_and_logits(
        logits_fn, x, labels, gamma=oracle_settings.gamma, steps=oracle_settings.steps,
        reference_batch_size=oracle_settings.reference_batch_size)
    metrics['teacher_accuracy'] = accuracy(logits_x, labels)
  out = logits_fn(teacher_input, return_features=with_features)
  logits, feats = out if with_features else (out, None)
  logits, feats = jax.lax.stop_gradient((logits, feats))
  metrics['oracle_accuracy' if oracle_settings.enabled else 'teacher_accuracy'] = accuracy(
      logits, labels)
  return logits, feats, metrics


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def gradients(trainable, batch_stats, teacher_variables, batch, epoch, *, config,
              oracle_settings, student, teacher, spec, distiller):
  """Loss gradients of one (micro-)batch: `(grads, new batch_stats, metrics)`."""
  # x stays float32: the models cast to config.dtype inside, so the oracle update x* is
  # formed in float32 while the teacher's forward and input gradient run in bf16.
  x = data.normalize(batch['image'], spec)
  labels = batch['label']
  metrics = {}
  t_logits = t_feats = None
  if distiller is not None:
    t_logits, t_feats, metrics = teacher_signal(oracle_settings, teacher, teacher_variables, x,
                                                labels, distiller.needs_features)
  grads, batch_stats, terms = student_gradients(
      trainable, batch_stats, x, labels, t_logits, t_feats, epoch, student=student,
      distiller=distiller, ce_weight=config.ce_weight, label_smoothing=config.label_smoothing)
  return grads, batch_stats, {**metrics, **terms}


def student_gradients(trainable, batch_stats, x, labels, t_logits, t_feats, epoch, *, student,
                      distiller, ce_weight, label_smoothing):
  """Gradients of `ce_weight · CE + distiller loss` (CE alone without a distiller) given
  the teacher's signals: `(grads, new batch_stats, metrics)`. `ce_weight` and the
  distiller's weights may be traced (a population's per-member values)."""
  features = distiller is not None and distiller.needs_features

  def loss_fn(trainable):
    out, updates = student.apply({'params': trainable['student'], 'batch_stats': batch_stats},
                                 x, train=True, return_features=features, mutable=['batch_stats'])
    logits, s_feats = out if features else (out, None)
    ce = losses.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if distiller is None:
      return ce, (logits, updates.get('batch_stats', {}), {'ce': ce})
    distill_loss, terms = distiller.loss(trainable['distiller'], logits, s_feats, t_logits,
                                         t_feats, labels, epoch=epoch)
    return ce_weight * ce + distill_loss, (logits, updates.get('batch_stats', {}),
                                           {'ce': ce, **terms})

  (loss, (logits, batch_stats, terms)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(trainable)
  return grads, batch_stats, {**terms, 'loss': loss, 'accuracy': accuracy(logits, labels)}


def micro_batches(batch, count):
  """[B, …] → [count, B/count, …], micro-batch j = rows j, j+count, …: every device's
  shard of the global batch holds an equal part of each micro-batch."""
  return jax.tree.map(lambda a: a.reshape(a.shape[0] // count, count, *a.shape[1:]).swapaxes(0, 1),
                      batch)


def train_step(state, teacher_variables, batch, rng, *, config, oracle_settings, student,
               teacher, spec, learning_rate_fn, distiller=None, steps_per_epoch=1.0):
  """One optimizer step. `distiller` (from `oracle_jax.methods.get`) is None for
  supervised training (`method='scratch'`); `oracle_settings` (`oracle.Settings`) says
  whether and how its teacher signals come from x*. With `config.grad_accum_steps = k > 1` the
  gradient is the mean over k micro-batches (equal to the whole batch's, except that
  BatchNorm normalises each micro-batch with its own statistics)."""
  del rng  # The bundled models are deterministic; kept for models with dropout.
  epoch = jnp.floor(state.step / steps_per_epoch) + 1  # from 1, as mdistiller's DKD warm-up
  grad_fn = functools.partial(gradients, teacher_variables=teacher_variables, epoch=epoch,
                              config=config, oracle_settings=oracle_settings, student=student,
                              teacher=teacher, spec=spec, distiller=distiller)
  trainable = state.trainable()
  accum = config.get('grad_accum_steps', 1)
  if accum == 1:
    grads, batch_stats, metrics = grad_fn(trainable, state.batch_stats, batch=batch)
  else:
    def body(carry, micro):
      grads_sum, batch_stats = carry
      grads, batch_stats, metrics = grad_fn(trainable, batch_stats, batch=micro)
      return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats), metrics

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (grads, batch_stats), metrics = jax.lax.scan(body, (zeros, state.batch_stats),
                                                 micro_batches(batch, accum))
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
  new_state = apply_gradients(state, grads, batch_stats)
  metrics.update(grad_norm=optax.tree.norm(grads), learning_rate=learning_rate_fn(state.step))
  return new_state, metrics


def apply_gradients(state, grads, batch_stats, tx=None):
  """The optimizer step, by `state.tx` or by `tx`, an optimizer of the same structure (a
  population member's, whose learning rate is its own multiple of the shared schedule)."""
  trainable = state.trainable()
  updates, opt_state = (tx or state.tx).update(grads, state.opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  return state.replace(step=state.step + 1, params=trainable['student'],
                       distiller_params=trainable['distiller'], batch_stats=batch_stats,
                       opt_state=opt_state)


def eval_step(variables, batch, *, model, spec):
  """Sums (not means) so batches and processes add up exactly; padding is masked."""
  logits = model.apply(variables, data.normalize(batch['image'], spec), train=False)
  mask = batch['mask']
  top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == batch['label'][:, None], -1)
  return {'correct_top1': jnp.sum((jnp.argmax(logits, -1) == batch['label']) & mask),
          'correct_top5': jnp.sum(top5 & mask), 'count': jnp.sum(mask),
          'loss_sum': jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
              logits, batch['label']) * mask)}


def jit_train_step(mesh, state_sharding, compiler_options=None, **kwargs):
  """The train step jitted once: batch sharded on `data`, state replicated and donated.
  `compiler_options`: XLA options for this program (the second half of `conv.choose`)."""
  batch = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  return jax.jit(functools.partial(train_step, **kwargs),
                 in_shardings=(state_sharding, replicated, batch, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                 compiler_options=compiler_options or None)


def teacher_eval_step(teacher_variables, batch, *, oracle_settings, teacher, spec):
  """Correct counts of the teacher on x and, with the oracle on, on x* (Table 1)."""
  x, labels, mask = data.normalize(batch['image'], spec), batch['label'], batch['mask']
  logits_fn = functools.partial(teacher.apply, teacher_variables, train=False)
  correct = lambda logits: jnp.sum((jnp.argmax(logits, -1) == labels) & mask)
  if not oracle_settings.enabled:
    return {'correct_teacher_top1': correct(logits_fn(x)), 'count': jnp.sum(mask)}
  x_star, logits_x = oracle.reinforce_and_logits(
      logits_fn, x, labels, gamma=oracle_settings.gamma, steps=oracle_settings.steps,
      reference_batch_size=oracle_settings.reference_batch_size)
  return {'correct_teacher_top1': correct(logits_x), 'correct_oracle_top1': correct(logits_fn(x_star)),
          'count': jnp.sum(mask)}


def jit_eval_step(step, mesh, compiler_options=None, **kwargs):
  """An eval-style step `(variables, batch) -> sums`, jitted once over the mesh."""
  replicated = parallel.replicated(mesh)
  return jax.jit(functools.partial(step, **kwargs),
                 in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=replicated, compiler_options=compiler_options or None)
