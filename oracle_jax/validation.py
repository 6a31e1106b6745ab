"""Checks that turn a user's mistake into one sentence saying how to fix it, before any
work is done or anything is written."""
import json

import jax

from oracle_jax import conv, fileio, models

METHODS = ('scratch', 'kd', 'fitnet', 'at', 'dkd', 'sad')
DTYPES = ('float32', 'bfloat16')
# Keys that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = frozenset({'overwrite', 'log_every_steps', 'eval_batch_size', 'data_dir',
                               'checkpoint_every_steps', 'keep_checkpoints', 'tensorboard',
                               'reference_top1'})


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names the key and the fix."""


def _require(ok, message):
  if not ok:
    raise ConfigError(message)


def validate_config(config):
  from oracle_jax import data  # pylint: disable=g-import-not-at-top
  data.dataset_spec(config.dataset)  # unknown dataset → ValueError listing the known ones
  _require(config.method in METHODS,
           f'Unknown method {config.method!r}; choose one of {", ".join(METHODS)}.')
  names = [config.student.model] + ([config.teacher.model] if config.method != 'scratch' else [])
  for name in names:
    _require(name in models.NAMES, f'Unknown model {name!r}; choose one of: {", ".join(models.NAMES)}.')
  _require(0 <= config.oracle.gamma < float('inf'),
           f'oracle.gamma must be >= 0 and finite, got {config.oracle.gamma}.')
  _require(config.oracle.steps >= 1, f'oracle.steps must be >= 1, got {config.oracle.steps}.')
  _require(config.oracle.reference_batch_size >= 1,
           f'oracle.reference_batch_size must be >= 1, got {config.oracle.reference_batch_size}.')
  _require(config.temperature > 0, f'temperature must be > 0, got {config.temperature}.')
  _require(config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}.')
  _require(config.grad_accum_steps >= 1 and config.batch_size % config.grad_accum_steps == 0,
           f'grad_accum_steps={config.grad_accum_steps} must be >= 1 and divide '
           f'batch_size={config.batch_size}.')
  _require(config.train_steps >= 0, f'train_steps must be >= 0 (0 = use num_epochs), got '
           f'{config.train_steps}.')
  _require(config.train_steps > 0 or config.num_epochs > 0,
           f'num_epochs must be > 0 when train_steps is 0, got {config.num_epochs}.')
  _require(config.dtype in DTYPES, f'dtype must be one of {DTYPES}, got {config.dtype!r}.')
  _require(config.conv_impl in conv.NAMES,
           f'conv_impl must be one of {conv.NAMES}, got {config.conv_impl!r}.')
  _require(config.optimizer.learning_rate > 0,
           f'optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}.')
  _require(config.method == 'scratch' or config.teacher.checkpoint,
           f'method={config.method!r} needs a teacher: set --config.teacher.checkpoint to a '
           'model checkpoint directory (e.g. WORKDIR/teacher of a method=scratch run) or a '
           '.pth file.')


def check_batch(batch, spec):
  """The first batch must be what the models were built for: uint8 NHWC of spec's shape."""
  image = batch['image']
  _require(image.ndim == 4 and tuple(image.shape[1:]) == tuple(spec.image_shape),
           f'Images of dataset {spec.name!r} have shape {tuple(image.shape)} but the models '
           f'expect (batch, {", ".join(map(str, spec.image_shape))}) NHWC; check the input '
           'pipeline or the dataset.')
  _require(str(image.dtype) == 'uint8', f'Images must arrive as uint8 (normalized on device), '
           f'got {image.dtype}.')
  labels = batch['label']
  bad = labels[(labels < 0) | (labels >= spec.num_classes)]
  _require(bad.size == 0, f'Label {bad[:1].tolist()} is outside [0, {spec.num_classes}) for '
           f'dataset {spec.name!r}; fix the labels or the dataset name.')


def prepare_workdir(config, workdir):
  """Creates `workdir` (an `epath.Path`, local or gs://), or checks that the run it holds
  is this config's (resumable)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write_test.{jax.process_index()}'  # processes probe at once
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise ConfigError(f'Workdir {str(workdir)!r} is not writable ({e.strerror or e}); pass a '
                      '--workdir you can write to.') from None
  path = workdir / 'config.json'
  current = json.loads(config.to_json_best_effort())
  if jax.process_index() != 0:  # process 0 checks and writes; the others follow it
    return
  if path.exists():
    saved = json.loads(path.read_text())
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed and not config.overwrite:
      raise ConfigError(
          f'Workdir {str(workdir)!r} holds a run of a different config (differs in: '
          f'{", ".join(changed)}). Use another --workdir, or pass --config.overwrite=True '
          'to discard that run.')
    for name in ('checkpoints', 'best', 'teacher', 'tensorboard', 'metrics.jsonl',
                 'results.json') if changed else ():
      old = workdir / name
      if old.is_dir():
        old.rmtree()
      elif old.exists():
        old.unlink()
  fileio.write_json(path, current, sort_keys=True)
