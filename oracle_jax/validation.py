"""Checks that turn a user's mistake into one sentence saying how to fix it, before any
work is done or anything is written."""
import math
import numbers
import re

from oracle_jax import conv, data, methods, models, optim
from oracle_jax.interop import zoo
from oracle_jax.errors import ConfigError  # pylint: disable=unused-import  (callers catch it here)

DTYPES = ('float32', 'bfloat16')
SCHEDULES = ('step', 'cosine')

# Every numeric key and the values it takes ('int' = integers only). A sequence (decay
# epochs) is checked element by element. Keys a config lacks are skipped.
RANGES = {
    'num_epochs': '[0, inf)', 'train_steps': 'int [0, inf)',
    'train_examples': 'int [0, inf)', 'batch_size': 'int [1, inf)',
    'eval_batch_size': 'int [1, inf)', 'grad_accum_steps': 'int [1, inf)',
    'seed': 'int [0, 2147483647]', 'temperature': '(0, inf)', 'alpha': '[0, inf)',
    'ce_weight': '[0, inf)', 'label_smoothing': '[0, 1)', 'eval_every_epochs': '[0, inf)',
    'log_every_steps': 'int [0, inf)', 'checkpoint_every_steps': 'int [0, inf)',
    'keep_checkpoints': 'int [1, inf)',  # 0 would let orbax delete every checkpoint
    'image_size': 'int [1, 65536]', 'data_mean': '[0, 1]', 'data_std': '(0, inf)',
    'in_memory_gb': '[0, inf)',
    'oracle.gamma': '[0, inf)', 'oracle.steps': 'int [1, inf)',
    'oracle.reference_batch_size': 'int [1, inf)',
    'optimizer.learning_rate': '(0, inf)', 'optimizer.base_batch_size': 'int [0, inf)',
    'optimizer.momentum': '[0, 1)', 'optimizer.weight_decay': '[0, inf)',
    'schedule.decay_epochs': '[0, inf)', 'schedule.decay_factor': '(0, 1]',
    'schedule.warmup_epochs': '[0, inf)',
    'distill.fitnet_weight': '[0, inf)', 'distill.at_p': '(0, inf)',
    'distill.at_beta': '[0, inf)', 'distill.dkd_alpha': '[0, inf)',
    'distill.dkd_beta': '[0, inf)', 'distill.dkd_temperature': '(0, inf)',
    'distill.dkd_warmup_epochs': '[0, inf)', 'distill.sad_beta': '[0, inf)',
    'distill.sad_qk_dim': 'int [1, inf)', 'distill.sad_kd_weight': '[0, inf)',
}
_RANGE = re.compile(r'^(int )?([\[(])(\S+), (\S+)([\])])$')


def _require(ok, message):
  if not ok:
    raise ConfigError(message)


def _lookup(config, key):
  node = config
  for part in key.split('.'):
    if part not in node:
      return None
    node = node[part]
  return node


def _describe(allowed):
  integer, low_bracket, low, high, high_bracket = _RANGE.match(allowed).groups()
  what = 'an integer' if integer else 'a number'
  if high == 'inf':
    return f'{what} {">=" if low_bracket == "[" else ">"} {low}' + (
        '' if integer else ' and finite')
  return f'{what} in {allowed.removeprefix("int ")}'


def _in_range(value, allowed):
  integer, low_bracket, low, high, high_bracket = _RANGE.match(allowed).groups()
  kind = numbers.Integral if integer else numbers.Real
  if isinstance(value, bool) or not isinstance(value, kind):
    return False
  low, high = float(low), float(high)
  return (math.isfinite(value) and (low <= value if low_bracket == '[' else low < value)
          and (value <= high if high_bracket == ']' else value < high))


def check_ranges(config):
  """Every key of RANGES the config has, against its range; one sentence on the first bad."""
  for key, allowed in RANGES.items():
    value = _lookup(config, key)
    if value is None:
      continue
    for i, v in enumerate(value) if isinstance(value, (tuple, list)) else [(None, value)]:
      name = key if i is None else f'{key}[{i}]'
      _require(_in_range(v, allowed), f'{name} must be {_describe(allowed)}, got {v!r}.')


def check_dataset_keys(config):
  """The shapes of the dataset overrides, before any folder is read."""
  for key, length in (('image_size', 2), ('data_mean', None), ('data_std', None)):
    value = config.get(key, ())
    _require(isinstance(value, (tuple, list)) and (not value or length in (None, len(value))),
             f"{key} must be a tuple ({'(H, W)' if length else 'one number per channel'}), "
             f"e.g. --config.{key}='{'(32,32)' if length else '(0.49,0.48,0.45)'}'; got {value!r}.")
  _require(bool(config.get('data_mean', ())) == bool(config.get('data_std', ())),
           'Set data_mean and data_std together (one number per channel each), or neither.')


def validate_config(config):
  check_ranges(config)
  check_dataset_keys(config)
  spec = data.spec_for(config)  # unknown → ConfigError listing the known ones; folders checked
  _require(len(spec.mean) == len(spec.std) == spec.image_shape[-1],
           f'data_mean and data_std need one number per channel ({spec.image_shape[-1]} for '
           f'{spec.name}), got {len(spec.mean)} and {len(spec.std)}.')
  _require(config.method in methods.CHOICES,
           f'Unknown method {config.method!r}; choose one of {", ".join(methods.CHOICES)}.')
  distilled = methods.is_distilled(config)
  names = [config.student.model] + ([config.teacher.model] if distilled else [])
  for name in names:
    _require(name in models.NAMES, f'Unknown model {name!r}; choose one of: {", ".join(models.NAMES)}.')
  _require(config.batch_size % config.grad_accum_steps == 0,
           f'grad_accum_steps={config.grad_accum_steps} must divide '
           f'batch_size={config.batch_size}.')
  _require(config.train_steps > 0 or config.num_epochs > 0,
           f'num_epochs must be > 0 when train_steps is 0, got {config.num_epochs}.')
  _require(not (spec.streamed and config.train_examples),
           f'train_examples is not supported for {spec.name} (streamed); set it to 0.')
  _require(config.dtype in DTYPES, f'dtype must be one of {DTYPES}, got {config.dtype!r}.')
  _require(config.conv_impl in conv.CONV_IMPLS,
           f'conv_impl must be one of {conv.CONV_IMPLS}, got {config.conv_impl!r}.')
  _require(config.optimizer.name in optim.OPTIMIZERS,
           f'optimizer.name must be one of {optim.OPTIMIZERS}, got {config.optimizer.name!r}.')
  _require(config.schedule.name in SCHEDULES,
           f'schedule.name must be one of {SCHEDULES}, got {config.schedule.name!r}.')
  _require(not distilled or config.teacher.checkpoint,
           f'method={config.method!r} needs a teacher: set --config.teacher.checkpoint to a '
           'model checkpoint directory (e.g. WORKDIR/teacher of a method=scratch run) or a '
           '.pth file.')
  check_init_checkpoint(config.get('init_checkpoint', ''))


def check_init_checkpoint(source):
  """A `zoo:` name must be known. A path is checked when a new run reads it
  (`train.fit`, before anything is written), never here: a resumed run ignores it, and
  may run where the file no longer is."""
  name = source[len(zoo.PREFIX):] if source.startswith(zoo.PREFIX) else None
  _require(name is None or name in zoo.REGISTRY,
           f'init_checkpoint {source!r} names no zoo model; known: '
           f'{", ".join(sorted(zoo.REGISTRY))} (python -m oracle_jax.zoo list).')


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


def first_checked(host_batches, spec):
  """`host_batches`, the first one checked (`check_batch`) before any step uses it."""
  first = next(host_batches)
  check_batch(first, spec)
  yield first
  yield from host_batches
