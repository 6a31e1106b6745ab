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
  params: Any          # the student's parameters
  batch_stats: Any     # the student's BatchNorm running statistics (not optimizer state)
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, variables, tx):
    params = variables['params']
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params), tx=tx)

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


def make_optimizer(config, learning_rate_fn):
  """PyTorch SGD: weight decay joins the gradient before momentum, on every parameter
  (BN and biases included, as the official code), so it is chained first."""
  opt = config.optimizer
  if opt.name != 'sgd':
    raise ValueError(f"Unknown optimizer {opt.name!r}; supported: 'sgd'.")
  return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(learning_rate_fn, momentum=opt.momentum or None,
                               nesterov=opt.nesterov))


def teacher_signal(config, teacher, teacher_variables, x, labels):
  """Teacher logits on x* (oracle on) or x, plus the teacher's accuracy metrics."""
  logits_fn = functools.partial(teacher.apply, teacher_variables, train=False)
  if not config.oracle.enabled:
    logits = logits_fn(x)
    return jax.lax.stop_gradient(logits), {'teacher_accuracy': accuracy(logits, labels)}
  x_star, logits_x = oracle.reinforce_and_logits(
      logits_fn, x, labels, gamma=config.oracle.gamma, steps=config.oracle.steps,
      reference_batch_size=config.oracle.reference_batch_size)
  logits = jax.lax.stop_gradient(logits_fn(x_star))
  return logits, {'teacher_accuracy': accuracy(logits_x, labels),
                  'oracle_accuracy': accuracy(logits, labels)}


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def train_step(state, teacher_variables, batch, rng, *, config, student, teacher, spec,
               learning_rate_fn):
  del rng  # The bundled models are deterministic; kept for models with dropout.
  # x stays float32: the models cast to config.dtype inside, so the oracle update x* is
  # formed in float32 while the teacher's forward and input gradient run in bf16.
  x = data.normalize(batch['image'], spec)
  labels = batch['label']
  metrics = {}
  teacher_logits = None
  if config.method != 'scratch':
    teacher_logits, metrics = teacher_signal(config, teacher, teacher_variables, x, labels)

  def loss_fn(params):
    logits, updates = student.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, mutable=['batch_stats'])
    ce = losses.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    terms = {'ce': ce}
    loss = config.ce_weight * ce if teacher_logits is not None else ce
    if teacher_logits is not None:
      terms['kd'] = losses.kd_loss(logits, teacher_logits, config.temperature)
      loss = loss + config.alpha * terms['kd']
    return loss, (logits, updates['batch_stats'], terms)

  (loss, (logits, batch_stats, terms)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  metrics.update(terms, loss=loss, accuracy=accuracy(logits, labels),
                 grad_norm=optax.tree.norm(grads), learning_rate=learning_rate_fn(state.step))
  return new_state, metrics


def eval_step(variables, batch, *, model, spec):
  """Sums (not means) so batches and processes add up exactly; padding is masked."""
  logits = model.apply(variables, data.normalize(batch['image'], spec), train=False)
  mask = batch['mask']
  top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == batch['label'][:, None], -1)
  return {'correct_top1': jnp.sum((jnp.argmax(logits, -1) == batch['label']) & mask),
          'correct_top5': jnp.sum(top5 & mask), 'count': jnp.sum(mask),
          'loss_sum': jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
              logits, batch['label']) * mask)}


def jit_train_step(mesh, state_sharding, **kwargs):
  """The train step jitted once: batch sharded on `data`, state replicated and donated."""
  batch = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  return jax.jit(functools.partial(train_step, **kwargs),
                 in_shardings=(state_sharding, replicated, batch, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,))


def jit_eval_step(mesh, **kwargs):
  replicated = parallel.replicated(mesh)
  return jax.jit(functools.partial(eval_step, **kwargs),
                 in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=replicated)
