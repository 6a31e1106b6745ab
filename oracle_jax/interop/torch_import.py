"""PyTorch checkpoints (.pth) → Flax variables for the bundled models.

Reads the official oracle-KD / RepDistiller CIFAR checkpoints and torchvision's ImageNet
ResNets: a bare state_dict, a dict holding one (`state_dict`, `model`, `net`, …) or a
pickled whole `nn.Module`. Zip (PyTorch ≥ 1.6) and legacy files are read **without
PyTorch** and as data, never as code (`pth_reader`: an exact allowlist of globals, inert
stand-ins for model classes, bounds-checked tensor views), so importing a teacher needs
neither torch nor the model's Python code, and a hostile file is refused before anything
in it runs. A `.safetensors` file (timm's, Hugging Face's; `safetensors_reader`) works
wherever a `.pth` does.

    python -m oracle_jax.torch_import IN.pth OUT_DIR --model=resnet56 --num_classes=100
"""
import argparse
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from oracle_jax import checkpoints, errors, fileio, models
from oracle_jax.interop import pth_reader, safetensors_reader

_STATE_DICT_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'student', 'module')


class CheckpointMismatchError(errors.UserError, ValueError):
  """The checkpoint does not fit the requested model (names, shapes, class count, dtype) or
  holds non-finite weights."""


# The reader's errors, for callers of `load` and `read_state_dict`.
UnsafeCheckpointError = pth_reader.UnsafeCheckpointError
MalformedCheckpointError = pth_reader.MalformedCheckpointError


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


def convert_state_dict(state_dict: Mapping[str, Any], model_name: str, num_classes=None,
                       **model_kwargs):
  """Maps a PyTorch state_dict (names → arrays) onto the Flax variables of `model_name`
  with `num_classes` classes (None: the checkpoint's own, its classifier's rows).

  Raises CheckpointMismatchError naming the first missing/unexpected key or the first
  shape mismatch (expected vs found, in PyTorch layout), with a special message when only
  the class count differs, and the first array that is not floating point or not finite.
  """
  arrays = {_strip_prefix(k): np.asarray(v) for k, v in state_dict.items()
            if not k.endswith('num_batches_tracked')}
  stem = arrays.get('conv1.weight')
  in_channels = stem.shape[1] if stem is not None and stem.ndim == 4 else 3
  if num_classes is None:
    num_classes = _classes(arrays)
  target = models.abstract_variables(model_name, num_classes, in_channels, **model_kwargs)
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  names = [_torch_name(path) for path, _ in flat]
  _check_keys(arrays, names, model_name)
  leaves = []
  for name, (_, spec) in zip(names, flat):
    found, expected = arrays[name].shape, _torch_shape(spec.shape)
    if found != expected:
      if (name.startswith(f'{models.CLASSIFIER}.') and len(found) == len(expected)
          and found[0] != num_classes):
        raise CheckpointMismatchError(
            f'The checkpoint has {found[0]} classes ({name} has shape {found}) but '
            f'num_classes={num_classes}; set num_classes to match the dataset the '
            f'teacher was trained on, or use a teacher for this dataset.')
      raise CheckpointMismatchError(
          f'Shape mismatch for {name!r} in a {model_name} checkpoint: expected '
          f'{expected}, found {found}. Is it a checkpoint of another architecture?')
    _check_values(name, arrays[name])
    leaves.append(jnp.asarray(_to_flax_layout(arrays[name], spec.shape), spec.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _classes(arrays):
  """The class count of a state_dict's classifier; 1 when it has none (then the key check
  names the missing classifier)."""
  weight = arrays.get(f'{models.CLASSIFIER}.weight')
  return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 1


def _check_values(name, array):
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise CheckpointMismatchError(
        f'{name!r} holds {array.dtype} values, but weights and BatchNorm statistics are '
        'floating point; is it a quantized or damaged checkpoint?')
  if not np.isfinite(array).all():
    raise CheckpointMismatchError(
        f'{name!r} holds NaN or infinite values: these weights are unusable (saved from a '
        'diverged run?).')


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
        'Check the model name (--model, teacher.model or student.model) against the '
        'architecture it was saved from.')


def to_state_dict(variables, num_batches_tracked=None):
  """The inverse of `convert_state_dict`: Flax variables → PyTorch names and layouts.

  With `num_batches_tracked` (a count, or `{BatchNorm name: count}` as `batches_tracked`
  returns, 0 for a BatchNorm it lacks) every BatchNorm also gets PyTorch's int64
  `<name>.num_batches_tracked` buffer, so the result is a whole PyTorch state_dict.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(variables)
  out = {}
  for path, leaf in flat:
    leaf = np.asarray(leaf)
    if leaf.ndim == 4:
      leaf = leaf.transpose(3, 2, 0, 1)
    elif leaf.ndim == 2:
      leaf = leaf.T
    out[_torch_name(path)] = leaf
  if num_batches_tracked is not None:
    for layer in [n[:-len('.running_mean')] for n in out if n.endswith('.running_mean')]:
      count = (num_batches_tracked.get(layer, 0) if isinstance(num_batches_tracked, Mapping)
               else num_batches_tracked)
      out[f'{layer}.num_batches_tracked'] = np.asarray(count, np.int64)
  return out


def batches_tracked(state_dict: Mapping[str, Any]):
  """`{BatchNorm name: num_batches_tracked}` of a PyTorch state_dict, the counts that are
  non-negative integers (`convert_state_dict` drops them: inference does not use them)."""
  out = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    if (name.endswith('.num_batches_tracked') and value.size == 1 and
        np.issubdtype(value.dtype, np.integer) and value.reshape(()) >= 0):
      out[_strip_prefix(name)[:-len('.num_batches_tracked')]] = int(value.reshape(()))
  return out


# ----------------------------------------------------------------------------- reading

def _entries(module, field, path, budget):
  entries = module.state.get(field) or {}
  if not isinstance(entries, Mapping):
    raise pth_reader.MalformedCheckpointError(
        f'{path}: a pickled module\'s {field} is not a dict of names.')
  budget.charge(1 + len(entries))  # a dict shared by many modules is charged at each
  if not all(isinstance(k, str) for k in entries):
    raise pth_reader.MalformedCheckpointError(
        f'{path}: a pickled module\'s {field} is not a dict of names.')
  return entries


def _module_state(root, path, budget):
  """Walks a pickled nn.Module (its stand-in) like `state_dict()` does.

  A submodule reached by two paths is walked (and its entries named) under each, as
  torch does; a module inside itself is refused. Every module visited and every key built
  is charged to the file's `budget`, so keys growing with the depth, or paths multiplying
  through shared submodules, end in an error in time linear in the file's size.
  """
  out, pending = {}, [(0, '', root)]
  path_ids, on_path = [], set()  # the modules from the root to the one walked
  while pending:
    depth, prefix, module = pending.pop()
    while len(path_ids) > depth:
      on_path.discard(path_ids.pop())
    if id(module) in on_path:
      raise pth_reader.MalformedCheckpointError(
          f'{path}: its pickled module contains itself (at {prefix[:80]!r}); torch\'s own '
          'state_dict() would recurse forever.')
    path_ids.append(id(module))
    on_path.add(id(module))
    budget.charge(8 + len(prefix) // 8)
    skipped = module.state.get('_non_persistent_buffers_set') or set()
    if not isinstance(skipped, (set, frozenset)):
      raise pth_reader.MalformedCheckpointError(
          f'{path}: a pickled module\'s _non_persistent_buffers_set is not a set.')
    for field in ('_parameters', '_buffers'):
      for name, value in _entries(module, field, path, budget).items():
        if value is not None and (field == '_parameters' or name not in skipped):
          budget.charge(16 + (len(prefix) + len(name)) // 8)  # the key and its entry
          out[f'{prefix}{name}'] = value
    children = _entries(module, '_modules', path, budget).items()
    pending.extend((depth + 1, f'{prefix}{name}.', child) for name, child in reversed(children)
                   if isinstance(child, pth_reader.StandIn))
    budget.charge(len(children) * (2 + len(prefix) // 8))
  return out


def _find_state_dict(obj, path, budget):
  """The state_dict in `obj`: itself, a module's, or one under a key such as 'model'."""
  for _ in range(len(_STATE_DICT_KEYS) + 1):  # a dict in a dict…, each under a known key
    if isinstance(obj, pth_reader.StandIn) and '_modules' in obj.state:
      return _module_state(obj, path, budget)
    if not isinstance(obj, Mapping):
      break
    budget.charge(10 * len(obj))
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
      return dict(obj)
    key = next((k for k in _STATE_DICT_KEYS if k in obj), None)
    if key is None:
      break
    obj = obj[key]
  found = ([k[:40] if isinstance(k, str) else type(k).__name__ for k in list(obj)[:10]]
           if isinstance(obj, Mapping) else type(obj).__name__)
  raise pth_reader.MalformedCheckpointError(
      f'{path} holds no state_dict or nn.Module (found {found}); expected a state_dict, a '
      f'dict with one of {_STATE_DICT_KEYS}, or a pickled module.')


def read_state_dict(path: str):
  """The state_dict (name → numpy array) stored in a .pth file, in whichever form.

  The file is read as data (`pth_reader`): a pickle naming anything but tensors, storages
  and model classes raises UnsafeCheckpointError and runs nothing. Reading and walking it
  cost time and memory linear in the file's size (`pth_reader.Budget`).
  """
  budget = pth_reader.Budget()
  state = _find_state_dict(pth_reader.read(path, budget), path, budget)
  for name, value in state.items():
    if not isinstance(name, str):
      raise pth_reader.MalformedCheckpointError(
          f'{path}: a state_dict key is a {type(name).__name__}, not a name.')
    if not isinstance(value, np.ndarray):
      raise pth_reader.MalformedCheckpointError(
          f'{path}: the state_dict entry {name[:80]!r} is a {type(value).__name__}, '
          'not a tensor.')
  return state


def read_weights(path: str):
  """The state_dict of a `.safetensors` file (by its suffix) or of a `.pth` file."""
  if safetensors_reader.is_safetensors(path):
    return safetensors_reader.read_state_dict(path)
  return read_state_dict(path)


def read_model(path: str, model_name: str, num_classes=None, **model_kwargs):
  """`(variables, counts)` of a .pth or .safetensors file: the Flax variables (with
  `num_classes` classes, None: the file's own) and each BatchNorm's `num_batches_tracked`
  (`batches_tracked`)."""
  state_dict = read_weights(path)
  try:
    variables = convert_state_dict(state_dict, model_name, num_classes, **model_kwargs)
  except CheckpointMismatchError as e:
    raise type(e)(f'{path}: {e}') from None
  return variables, batches_tracked(state_dict)


def load(path: str, model_name: str, num_classes=None, **model_kwargs):
  """Reads a .pth or .safetensors file and returns Flax variables `{'params', 'batch_stats'}`
  (with `num_classes` classes, None: the file's own)."""
  return read_model(path, model_name, num_classes, **model_kwargs)[0]


def convert_file(path: str, out_dir, model_name: str, num_classes: int, architecture=None,
                 **meta):
  """Converts the .pth or .safetensors at `path` into a model checkpoint in `out_dir`
  (`checkpoints.save_model`) whose meta records the model, its class count, its
  `architecture` options, the BatchNorms' `num_batches_tracked` where the file has them
  (for export) and `meta`."""
  architecture = architecture or {}
  variables, counts = read_model(path, model_name, num_classes, **architecture)
  if counts:
    meta['num_batches_tracked'] = counts
  checkpoints.save_model(out_dir, variables, model=model_name, num_classes=num_classes,
                         **architecture, **meta)


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m oracle_jax.torch_import',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('checkpoint', help='the .pth or .safetensors file')
  parser.add_argument('out_dir', help='orbax checkpoint directory to write')
  parser.add_argument('--model', required=True, choices=models.NAMES)
  parser.add_argument('--num_classes', required=True, type=int)
  parser.add_argument('--small_stem', action='store_true', help='ImageNet ResNets: 3x3 stem')
  args = parser.parse_args(argv)
  try:
    convert_file(args.checkpoint, args.out_dir, args.model, args.num_classes,
                 models.architecture(vars(args)), source=str(fileio.path(args.checkpoint)))
  except errors.UserError as e:  # anything else is a bug: keep its traceback
    raise SystemExit('error: ' + ' '.join(str(e).split())) from None
  print(f'Wrote {args.model} ({args.num_classes} classes) to {args.out_dir}')


if __name__ == '__main__':
  main()
