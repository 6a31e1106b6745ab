"""The optimizer and its learning-rate schedule, both read from `config.optimizer` and
`config.schedule`."""
import jax
import optax

from oracle_jax import errors

OPTIMIZERS = ('sgd',)


def learning_rate_fn(config, steps_per_epoch, total_steps):
  """The official step schedule (×0.1 at given epochs) or cosine, with optional warm-up."""
  opt, sched = config.optimizer, config.schedule
  base = opt.learning_rate
  if opt.base_batch_size:
    base = base * config.batch_size / opt.base_batch_size
  warmup = int(round(sched.warmup_epochs * steps_per_epoch))
  if sched.name == 'step':
    boundaries = {int(round(e * steps_per_epoch)): sched.decay_factor for e in sched.decay_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif sched.name == 'cosine':
    main = optax.cosine_decay_schedule(base, max(1, total_steps - warmup))
  else:
    raise errors.ConfigError(f"Unknown schedule {sched.name!r}; use 'step' or 'cosine'.")
  if not warmup:
    return main
  if sched.name == 'step':  # the step schedule counts epochs from the start of training
    return lambda step: jax.numpy.where(step < warmup, base * step / warmup, main(step))
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def make_optimizer(config, lr_fn):
  """PyTorch SGD: weight decay joins the gradient before momentum, on every parameter
  (BN and biases included, as the official code), so it is chained first."""
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise errors.ConfigError(f'Unknown optimizer {opt.name!r}; supported: {OPTIMIZERS}.')
  return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(lr_fn, momentum=opt.momentum or None, nesterov=opt.nesterov))
