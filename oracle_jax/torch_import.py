"""PyTorch checkpoints (.pth) → Flax variables for the bundled models.

Reads the official oracle-KD / RepDistiller CIFAR checkpoints and torchvision's ImageNet
ResNets: a bare state_dict, a dict holding one (`state_dict`, `model`, `net`, …) or a
pickled whole `nn.Module`. Zip-format files (PyTorch ≥ 1.6) are read **without PyTorch**:
the pickle is replayed with stand-ins for model classes and storages become numpy
arrays, so importing a teacher never needs the model's Python code (nor torch). Legacy
non-zip files need torch (`pip install 'oracle_jax[torch]'`).

    python -m oracle_jax.torch_import IN.pth OUT_DIR --model=resnet56 --num_classes=100
"""
import argparse
import os
import pickle
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from oracle_jax import errors, models

_STATE_DICT_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'student', 'module')
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class CheckpointMismatchError(errors.UserError, ValueError):
  """The checkpoint does not fit the requested model (names, shapes or class count)."""


# ----------------------------------------------------------------------------- names

def _torch_module_path(flax_path):
  """('layer2_0', 'downsample_conv') → 'layer2.0.downsample.0' (and WRN's names)."""
  parts = []
  for name in flax_path:
    head, _, index = name.rpartition('_')
    if name == 'downsample_conv':
      parts.append('downsample.0')
    elif name == 'downsample_bn':
      parts.append('downsample.1')
    elif name == 'shortcut':
      parts.append('convShortcut')
    elif head.startswith('layer') and index.isdigit():
      parts.append(f'{head}.{index}')
    elif head.startswith('block') and index.isdigit():
      parts.append(f'{head}.layer.{index}')
    else:
      parts.append(name)
  return '.'.join(parts)


_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
               ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}


def _torch_name(path):
  keys = [k.key for k in path]
  collection, module_path, leaf = keys[0], keys[1:-1], keys[-1]
  return f'{_torch_module_path(module_path)}.{_LEAF_NAMES[(collection, leaf)]}'


def _to_flax_layout(array, flax_shape):
  if len(flax_shape) == 4:  # conv OIHW → HWIO
    return array.transpose(2, 3, 1, 0)
  if len(flax_shape) == 2:  # Linear (out, in) → Dense (in, out)
    return array.T
  return array


def _torch_shape(flax_shape):
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def abstract_variables(model_name: str, num_classes: int, in_channels: int = 3, **model_kwargs):
  """Shapes of the model's variables, without allocating them."""
  model = models.create(model_name, num_classes, **model_kwargs)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, in_channels)))


def convert_state_dict(state_dict: Mapping[str, Any], model_name: str, num_classes: int,
                       **model_kwargs):
  """Maps a PyTorch state_dict (names → arrays) onto the Flax variables of `model_name`.

  Raises CheckpointMismatchError naming the first missing/unexpected key or the first
  shape mismatch (expected vs found, in PyTorch layout), with a special message when only
  the class count differs.
  """
  arrays = {_strip_prefix(k): np.asarray(v) for k, v in state_dict.items()
            if not k.endswith('num_batches_tracked')}
  stem = arrays.get('conv1.weight')
  in_channels = stem.shape[1] if stem is not None and stem.ndim == 4 else 3
  target = abstract_variables(model_name, num_classes, in_channels, **model_kwargs)
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  names = [_torch_name(path) for path, _ in flat]
  _check_keys(arrays, names, model_name)
  leaves = []
  for name, (_, spec) in zip(names, flat):
    found, expected = arrays[name].shape, _torch_shape(spec.shape)
    if found != expected:
      if name.startswith('fc.') and found[0] != num_classes:
        raise CheckpointMismatchError(
            f'The checkpoint has {found[0]} classes ({name} has shape {found}) but '
            f'num_classes={num_classes}; set num_classes to match the dataset the '
            f'teacher was trained on, or use a teacher for this dataset.')
      raise CheckpointMismatchError(
          f'Shape mismatch for {name!r} in a {model_name} checkpoint: expected '
          f'{expected}, found {found}. Is it a checkpoint of another architecture?')
    leaves.append(jnp.asarray(_to_flax_layout(arrays[name], spec.shape), spec.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _strip_prefix(name):
  return name[len('module.'):] if name.startswith('module.') else name  # DataParallel


def _check_keys(arrays, names, model_name):
  missing = [n for n in names if n not in arrays]
  unexpected = sorted(set(arrays) - set(names))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing key(s), first {missing[0]!r}')
    if unexpected:
      parts.append(f'{len(unexpected)} unexpected key(s), first {unexpected[0]!r}')
    raise CheckpointMismatchError(
        f'The checkpoint does not match model {model_name!r}: {"; ".join(parts)}. '
        f'Check --model (or teacher.model) against the architecture it was saved from.')


def to_state_dict(variables):
  """The inverse of `convert_state_dict`: Flax variables → PyTorch names and layouts."""
  flat, _ = jax.tree_util.tree_flatten_with_path(variables)
  out = {}
  for path, leaf in flat:
    leaf = np.asarray(leaf)
    if leaf.ndim == 4:
      leaf = leaf.transpose(3, 2, 0, 1)
    elif leaf.ndim == 2:
      leaf = leaf.T
    out[_torch_name(path)] = leaf
  return out


# ----------------------------------------------------------------------------- reading

class _StandIn:
  """Any class the pickle names that we need not (or cannot) import: keeps its state."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
      self.__dict__.update(state[0])  # (dict, slots)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *unused):
  return data


class _ZipUnpickler(pickle.Unpickler):
  """Replays torch's `data.pkl` with numpy storages and stand-in classes."""

  def __init__(self, file, archive, root):
    super().__init__(file)
    self._archive, self._root = archive, root

  def find_class(self, module, name):
    if module == 'torch._utils' and name.startswith('_rebuild_tensor'):
      return _rebuild_tensor
    if module == 'torch._utils' and name.startswith('_rebuild_parameter'):
      return _rebuild_parameter
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module in ('collections', 'builtins', '__builtin__', 'copyreg'):
      return super().find_class(module, name)
    return type(name, (_StandIn,), {'__module__': module})

  def persistent_load(self, pid):
    _, dtype, key, _location, _numel = pid
    raw = self._archive.read(f'{self._root}/data/{key}')
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder('<'))


def _read_zip(path):
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if not pickles:
      raise ValueError(f'{path} is a zip archive but not a PyTorch checkpoint (no data.pkl).')
    root = pickles[0][:-len('/data.pkl')]
    with archive.open(pickles[0]) as f:
      return _ZipUnpickler(f, archive, root).load()


def _read_legacy(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'{path} is a legacy (non-zip) PyTorch file; reading it needs torch: '
                      "pip install 'oracle_jax[torch]'.") from None
  obj = torch.load(path, map_location='cpu', weights_only=False)
  return obj


def _module_state(obj, prefix=''):
  """Walks a pickled nn.Module (real or stand-in) like `state_dict()` does."""
  attrs = getattr(obj, '__dict__', {})
  out = {}
  non_persistent = attrs.get('_non_persistent_buffers_set', set())
  for name, value in attrs.get('_parameters', {}).items():
    if value is not None:
      out[prefix + name] = value
  for name, value in attrs.get('_buffers', {}).items():
    if value is not None and name not in non_persistent:
      out[prefix + name] = value
  for name, child in attrs.get('_modules', {}).items():
    if child is not None:
      out.update(_module_state(child, f'{prefix}{name}.'))
  return out


def _is_array(value):
  return isinstance(value, np.ndarray) or type(value).__name__ in ('Tensor', 'Parameter')


def _find_state_dict(obj, path):
  if '_modules' in getattr(obj, '__dict__', {}):
    return _module_state(obj)
  if isinstance(obj, Mapping):
    if obj and all(_is_array(v) for v in obj.values()):
      return dict(obj)
    for key in _STATE_DICT_KEYS:
      if key in obj:
        return _find_state_dict(obj[key], path)
  keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
  raise ValueError(f'{path} holds no state_dict or nn.Module (found {keys}); expected a '
                   f'state_dict, a dict with one of {_STATE_DICT_KEYS}, or a pickled module.')


def read_state_dict(path: str):
  """The state_dict (name → numpy array) stored in a .pth file, in whichever form."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'PyTorch checkpoint {path!r} does not exist.')
  if zipfile.is_zipfile(path):
    obj = _read_zip(path)
  else:
    with open(path, 'rb') as f:
      magic = f.read(2)
    if magic[:1] != b'\x80':  # every pickle protocol ≥ 2 starts with PROTO
      raise ValueError(f'{path} is not a PyTorch checkpoint (neither a zip archive nor a '
                       'pickle); pass a .pth written by torch.save.')
    obj = _read_legacy(path)
  state = _find_state_dict(obj, path)
  return {k: v if isinstance(v, np.ndarray) else v.detach().cpu().numpy()
          for k, v in state.items()}


def load(path: str, model_name: str, num_classes: int, **model_kwargs):
  """Reads a .pth file and returns Flax variables `{'params', 'batch_stats'}`."""
  return convert_state_dict(read_state_dict(path), model_name, num_classes, **model_kwargs)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('checkpoint', help='the .pth file')
  parser.add_argument('out_dir', help='orbax checkpoint directory to write')
  parser.add_argument('--model', required=True, choices=models.NAMES)
  parser.add_argument('--num_classes', required=True, type=int)
  parser.add_argument('--small_stem', action='store_true', help='ImageNet ResNets: 3x3 stem')
  args = parser.parse_args(argv)
  from oracle_jax import checkpoints  # pylint: disable=g-import-not-at-top
  kwargs = {'small_stem': True} if args.small_stem else {}
  variables = load(args.checkpoint, args.model, args.num_classes, **kwargs)
  checkpoints.save_model(args.out_dir, variables, model=args.model,
                         num_classes=args.num_classes, source=os.path.abspath(args.checkpoint),
                         **kwargs)
  print(f'Wrote {args.model} ({args.num_classes} classes) to {args.out_dir}')


if __name__ == '__main__':
  main()
