"""Reads PyTorch checkpoints (.pth) as data, never as code, and without PyTorch.

A `.pth` pickle is replayed on a small stack machine of its own that calls only the
functions of this module, after every global it names has passed an exact allowlist (at
least as strict as `torch.load(weights_only=True)`); model classes become inert `StandIn`s.
Tensors are bounds-checked numpy views of storages read once each. Formats: zip (torch >=
1.6: `<root>/data.pkl`, one record per storage) and the legacy stream (torch < 1.6).

The cost contract, whatever the bytes: a file whose pickles and zip directory hold p bytes
(legacy: the whole file) and whose storages hold s bytes is read in time <= a*(p + s) + c
and memory <= 64*p + 2*s + c. Every handler charges a `Budget` of `UNITS_PER_BYTE` units
per pickle byte (a unit: a step, or 8 bytes held; a memoised object again wherever it is
walked); ints, dims (< 2**48, ndim <= 64) and keys (str, bytes, int < 2**61) are bounded as
torch writes them; zip records must fit the archive's layout before any is read. Every
failure is an `UnsafeCheckpointError` or `MalformedCheckpointError` naming the file.
"""
import collections
import io
import math
import pickletools
import struct
import sys
import zipfile
import zlib
from typing import NamedTuple

import ml_dtypes
import numpy as np

from oracle_jax import errors, fileio


class UnsafeCheckpointError(errors.UserError, ValueError):
  """The checkpoint's pickle asks to run code: it names a global outside the allowlist."""


class MalformedCheckpointError(errors.UserError, ValueError):
  """The file is not a well-formed PyTorch checkpoint (damaged, truncated, inconsistent), or
  it would cost more to read than its size warrants."""




class _Refused(Exception):
  """Raised inside the reader; `read` adds the file's name and the fix."""


class _Damaged(Exception):
  """Raised inside the reader; `read` adds the file's name."""


def _shown(text, limit=80):
  """Text from the file as one printable line (a hostile name may hold newlines)."""
  if not isinstance(text, str):  # str() of a hostile object may not even terminate
    return f'<{type(text).__name__}>'
  text = text[:limit + 1]
  if not text.isprintable():
    text = ascii(text)[1:-1]
  return text if len(text) <= limit else text[:limit] + '...'


def _damaged_message(file, reason):
  return f'The PyTorch checkpoint {file!r} cannot be read: {reason}.'


# ----------------------------------------------------------------------------- the budget

UNITS_PER_BYTE = 8  # a pickle byte may cost 8 units, 64 bytes held (genuine files: 2.5-3.5)
BASE_UNITS = 1 << 18  # what any file may cost: 2 MiB, a fraction of a second


class Budget:
  """The work and memory reading one file may cost, charged as it is read.

  A unit is one step of work (one element of a container walked, one opcode) or about 8
  bytes of memory held. `read` grants `UNITS_PER_BYTE` units per byte of the file's pickles
  plus `BASE_UNITS`; callers walking what it returns (`torch_import`'s module walk) charge
  the same budget, so the whole read stays linear in the file's size. `spent` counts every
  unit charged: a deterministic measure of cost.
  """

  def __init__(self):
    self.file, self.limit, self.spent = None, 0, 0

  def grant(self, file, pickle_bytes):
    self.file = file
    self.limit += UNITS_PER_BYTE * pickle_bytes + BASE_UNITS

  def charge(self, units):
    self.spent += units
    if self.spent > self.limit:
      raise MalformedCheckpointError(_damaged_message(
          self.file, f'it costs more than its size warrants (over {self.limit} units of work '
          f'and memory for {(self.limit - BASE_UNITS) // UNITS_PER_BYTE} bytes of pickle: '
          'objects re-used or nested to blow up); a checkpoint written by torch.save never '
          'does that'))


# ----------------------------------------------------------------------------- element types

class _ElementType(NamedTuple):
  """What `torch.FloatStorage` & co. stand for: the dtype of a storage's elements."""
  name: str
  dtype: np.dtype


_STORAGE_TYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128,
}
# torch pickles a dtype as the global `torch.<name>`; `_rebuild_tensor_v3` takes one.
_TORCH_DTYPES = {
    'float32': np.float32, 'float64': np.float64, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32, 'int16': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'uint16': np.uint16, 'uint32': np.uint32,
    'uint64': np.uint64, 'bool': np.bool_, 'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2, 'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
    'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz, 'complex64': np.complex64,
    'complex128': np.complex128,
}
_UNTYPED = _ElementType('UntypedStorage', np.dtype(np.uint8))  # bytes; v3 gives the dtype


# ----------------------------------------------------------------------------- storages and tensors

class _Storage:
  """One storage's bytes, shared by every tensor that views it (as in PyTorch)."""

  def __init__(self, element_type: _ElementType, data: np.ndarray, byteorder: str = '<'):
    self.element_type, self.data, self.byteorder = element_type, data, byteorder
    self.swapped_unit = None

  def native(self, dtype):
    """`data` in this machine's byte order for `dtype`: a big-endian storage is swapped in
    place once, whatever the number of tensors viewing it."""
    if self.byteorder != '>':
      return self.data
    unit = dtype.itemsize // 2 if dtype.kind == 'c' else dtype.itemsize  # complex: 2 parts
    if self.swapped_unit is None:
      if unit > 1:
        self.data.view(f'u{unit}').byteswap(inplace=True)
      self.swapped_unit = unit
    elif self.swapped_unit != unit:
      raise _Damaged('a big-endian storage is viewed as elements of two different sizes')
    return self.data


_MAX_DIM = 2**48  # sizes, strides and offsets: far beyond any tensor a file can hold
_MAX_NDIM = 64


def _is_count(value):
  return type(value) is int and value >= 0  # pylint: disable=unidiomatic-typecheck  (no bools)


def _check_index_tuple(what, values):
  if not (isinstance(values, tuple) and len(values) <= _MAX_NDIM and
          all(_is_count(v) and v < _MAX_DIM for v in values)):
    raise _Damaged(f'a tensor {what} is not a tuple of at most {_MAX_NDIM} ints in '
                   '[0, 2**48)')


def _view(storage, dtype, offset, size, stride):
  """The tensor `torch.as_strided(storage, size, stride, offset)`, checked to fit."""
  if not isinstance(storage, _Storage):
    raise _Damaged('a tensor is built on something that is not a storage')
  _check_index_tuple('size', size)
  _check_index_tuple('stride', stride)
  if not (_is_count(offset) and offset < _MAX_DIM):
    raise _Damaged('a tensor storage offset is not an int in [0, 2**48)')
  if len(size) != len(stride):
    raise _Damaged(f'a tensor has {len(size)} sizes but {len(stride)} strides')
  if storage.data.size % dtype.itemsize:
    raise _Damaged(f'a storage of {storage.data.size} bytes does not hold whole {dtype} '
                   'elements')
  count = storage.data.size // dtype.itemsize
  if 0 in size:
    if math.prod(n for n in size if n) >= _MAX_DIM:
      raise _Damaged(f'an empty tensor has size {size}, beyond any real tensor')
    return np.zeros(size, dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= count:
    raise _Damaged(f'a tensor view (size {size}, stride {stride}, offset {offset}) reaches '
                   f'element {last} of a storage of {count} elements')
  # Non-overlapping: each stride, taken from the smallest, steps past all the elements
  # spanned by the smaller ones. This refuses stride 0 (a 1 MB file cannot become 8 GiB).
  span = 1
  for n, s in sorted((d for d in zip(size, stride) if d[0] > 1), key=lambda d: d[1]):
    if s < span:
      raise _Damaged(f'a tensor view (size {size}, stride {stride}) reads storage '
                     'elements more than once')
    span += (n - 1) * s
  return np.ndarray(size, dtype, buffer=storage.native(dtype), offset=offset * dtype.itemsize,
                    strides=[s * dtype.itemsize for s in stride])


def _check_metadata(metadata):
  # torch's lazy negation/conjugation bits: the stored values are not the tensor's.
  if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 8):
    raise _Damaged('a tensor has metadata that is not a small dict')
  if metadata and any(metadata.values()):
    raise _Damaged('a tensor is stored with a lazy negation or conjugation bit, which this '
                   'reader does not apply')


def _rebuild_tensor(storage, offset, size, stride):
  if not isinstance(storage, _Storage):
    raise _Damaged('a tensor is built on something that is not a storage')
  return _view(storage, storage.element_type.dtype, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
  del requires_grad, backward_hooks  # hooks are never saved: see torch's _rebuild_tensor_v2
  _check_metadata(metadata)
  return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  del requires_grad, backward_hooks
  _check_metadata(metadata)
  if not isinstance(dtype, np.dtype):
    raise _Damaged('a tensor names a dtype that is not one of torch\'s')
  return _view(storage, dtype, offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state  # a Parameter's Python attributes: not weights
  if not isinstance(data, np.ndarray):
    raise _Damaged('a Parameter wraps something that is not a tensor')
  return data


# ----------------------------------------------------------------------------- stand-ins

class StandIn:
  """An object of a class the pickle names; the class is never imported, nothing of it runs.

  `state` holds what the pickle stored for it (for an nn.Module: `_parameters`,
  `_buffers`, `_modules`, …).
  """
  __slots__ = ('state',)

  def __init__(self):
    self.state = {}

  def __repr__(self):
    return f'<stand-in for {type(self).__module__}.{type(self).__qualname__}>'


# Not model code, so never a stand-in (torch.nn.* excepted): a pickle naming their classes
# wants something other than a module's state.
_NOT_MODEL_PACKAGES = frozenset({'torch', 'numpy', 'ml_dtypes', 'jax', 'dill', 'cloudpickle',
                                 'joblib'})


def _is_model_class(module, name):
  """A class of the user's model code: a CapitalisedName outside stdlib and torch/numpy."""
  parts = module.split('.')
  if not (name.isidentifier() and name[0].isupper() and all(p.isidentifier() for p in parts)):
    return False
  if module.startswith('torch.nn.') or module == '__main__':
    return True
  top = parts[0]
  return not (top in sys.stdlib_module_names or top.startswith('_') or
              top in _NOT_MODEL_PACKAGES)


def _is_stand_in_class(value):
  return isinstance(value, type) and issubclass(value, StandIn) and value is not StandIn


# ----------------------------------------------------------------------------- the allowlist

# Each is called as f(budget, *args) and charges what it walks and builds.

def _new_ordered_dict(budget, items=()):
  """OrderedDict(); Python 2 pickled one as OrderedDict([[key, value], ...])."""
  if not isinstance(items, (list, tuple)):
    raise _Damaged('an OrderedDict is built from something that is not a list of pairs')
  budget.charge(16 + 12 * len(items))
  if not all(isinstance(i, (list, tuple)) and len(i) == 2 for i in items):
    raise _Damaged('an OrderedDict is built from something that is not a list of pairs')
  _check_keys([k for k, _ in items])
  return collections.OrderedDict(items)


# Keys as torch writes them (state_dict names, optimizer parameter ids): hashing them runs
# nothing, costs O(1) each, and no two of them share a hash unless they are equal.
_KEY_TYPES = (str, bytes, bool, type(None))
_HASH_MODULUS = sys.hash_info.modulus


def _check_keys(keys):
  for key in keys:
    if type(key) is int:  # pylint: disable=unidiomatic-typecheck
      if not -_HASH_MODULUS < key < _HASH_MODULUS:
        raise _Damaged('a dict key or set member is an integer beyond 2**61 (keys beyond it '
                       'can be made to collide)')
    elif not isinstance(key, _KEY_TYPES):
      raise _Damaged(f'a dict key or set member is a {type(key).__name__}, not a str or int')


def _new_set(budget, items=()):
  if not isinstance(items, list):
    raise _Damaged('a set is built from something that is not a list')
  budget.charge(28 + 14 * len(items))
  _check_keys(items)
  return set(items)


def _new_size(budget, dims):
  _check_index_tuple('size', dims)
  budget.charge(len(dims))
  return dims


def _tensor_function(function):
  """A rebuild function, charged for the array it makes (a numpy view: about 200 bytes)."""
  def charged(budget, *args):
    budget.charge(32 + len(args))
    return function(*args)
  return charged


_REBUILD_FUNCTIONS = {
    '_rebuild_tensor': _rebuild_tensor, '_rebuild_tensor_v2': _rebuild_tensor_v2,
    '_rebuild_tensor_v3': _rebuild_tensor_v3, '_rebuild_parameter': _rebuild_parameter,
    '_rebuild_parameter_with_state': _rebuild_parameter,
}
_ALLOWED_GLOBALS = {
    **{('torch._utils', name): _tensor_function(f) for name, f in _REBUILD_FUNCTIONS.items()},
    **{('torch', name): _ElementType(name, np.dtype(d)) for name, d in _STORAGE_TYPES.items()},
    ('torch.storage', 'UntypedStorage'): _UNTYPED, ('torch', 'UntypedStorage'): _UNTYPED,
    **{('torch', name): np.dtype(d) for name, d in _TORCH_DTYPES.items()},
    ('collections', 'OrderedDict'): _new_ordered_dict,
    ('builtins', 'set'): _new_set, ('__builtin__', 'set'): _new_set,  # Python 2's name
    ('torch', 'Size'): _new_size,
}
_CALLABLES = frozenset(f for f in _ALLOWED_GLOBALS.values() if callable(f))


def _resolve(module, name, budget, classes):
  """What the global `module.name` means here; refuses everything outside the allowlist.

  A model class is made once per file (`classes`), however often the pickle names it."""
  if not (isinstance(module, str) and isinstance(name, str)):
    raise _Damaged('a global is named by something that is not a string')
  budget.charge(4 + (len(module) + len(name)) // 4)  # hashed, split and checked
  allowed = _ALLOWED_GLOBALS.get((module, name))
  if allowed is not None:
    return allowed
  known = classes.get((module, name))
  if known is not None:
    return known
  if module == 'torch._utils' and name.startswith('_rebuild_'):
    raise _Damaged(f'it holds a kind of tensor this reader does not read ({module}.{name}); '
                   'only dense tensors are supported')
  if _is_model_class(module, name):
    budget.charge(256 + (len(module) + len(name)) // 4)  # a class: about 2 KB
    classes[module, name] = type(name, (StandIn,), {'__module__': module,
                                                    '__qualname__': name, '__slots__': ()})
    return classes[module, name]
  raise _Refused(f'the global {_shown(module)}.{_shown(name)} named in its pickle')


# ----------------------------------------------------------------------------- the pickle machine

def _no_persistent_ids(pid):
  del pid
  raise _Damaged('a pickle that should hold plain data refers to a storage')


_MAX_INT_BITS = 128  # torch's legacy magic number has 77; any real count fits in 64
_MAX_MEMO_INDEX = 2**32  # what LONG_BINPUT can name


class _Unpickler:
  """Replays one pickle, calling nothing but the allowlisted functions above."""

  def __init__(self, budget, classes, persistent_load=_no_persistent_ids):
    self._budget, self._classes = budget, classes
    self._persistent_load = persistent_load
    self._stack, self._marks, self._memo, self._result = [], [], {}, None

  def load(self, stream):
    """Reads one pickle from `stream` (up to its STOP) and returns its object."""
    start = stream.tell()
    for op, arg, _ in self._opcodes(stream):  # refuse before anything runs
      if op.name in ('GLOBAL', 'INST'):
        _resolve(*arg.split(' ', 1), self._budget, self._classes)
      if op.name not in _HANDLERS:
        raise _Refused(f'the pickle opcode {op.name} (never written by torch)')
    stream.seek(start)
    self._stack, self._marks, self._memo = [], [], {}
    budget = self._budget
    for op, arg, position in self._opcodes(stream):
      budget.charge(1)
      try:
        _HANDLERS[op.name](self, arg)
      except errors.UserError:
        raise  # the budget's, which names the file (and is a ValueError)
      except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise _Damaged(f'its pickle is malformed at byte {position} ({op.name}: '
                       f'{type(e).__name__} {_shown(str(e))})') from None
    return self._result

  @staticmethod
  def _opcodes(stream):
    try:
      yield from pickletools.genops(stream)
    except ValueError as e:  # an unknown opcode, a truncated argument, no STOP
      raise _Damaged(f'its pickle is malformed ({_shown(str(e))})') from None

  def _charge(self, units):
    self._budget.charge(units)

  def _pop_mark(self):
    items, self._stack = self._stack, self._marks.pop()
    return items

  def _mark(self, _):
    self._charge(8)  # a new list for the stack
    self._marks.append(self._stack)
    self._stack = []

  def _push_arg(self, arg):
    if isinstance(arg, int) and arg.bit_length() > _MAX_INT_BITS:
      raise _Damaged(f'its pickle holds an integer of {arg.bit_length()} bits (a '
                     f'checkpoint\'s fit in {_MAX_INT_BITS})')
    self._charge(4 + (len(arg) // 8 if isinstance(arg, (str, bytes)) else 0))
    self._stack.append(arg)

  def _tuple_mark(self, _):
    items = self._pop_mark()  # first: it replaces self._stack
    self._charge(6 + len(items))
    self._stack.append(tuple(items))

  def _list(self, _):
    items = self._pop_mark()
    self._stack.append(items)

  def _dict(self, _):
    items = self._pop_mark()
    self._charge(8)
    target = {}
    _set_items(self._budget, target, items)
    self._stack.append(target)

  def _frozenset(self, _):
    items = self._pop_mark()
    self._charge(28 + 14 * len(items))
    _check_keys(items)
    self._stack.append(frozenset(items))

  def _target(self, kind):
    target = self._stack[-1]
    if not isinstance(target, kind):
      raise TypeError(f'adds items to a {type(target).__name__}')
    return target

  def _append(self, _):
    value = self._stack.pop()
    self._charge(2)
    self._target(list).append(value)

  def _appends(self, _):
    items = self._pop_mark()
    self._charge(2 * len(items))
    self._target(list).extend(items)

  def _set_item(self, _):
    value, key = self._stack.pop(), self._stack.pop()
    _set_items(self._budget, self._target(dict), [key, value])

  def _set_items_mark(self, _):
    items = self._pop_mark()
    _set_items(self._budget, self._target(dict), items)

  def _add_items(self, _):
    items = self._pop_mark()
    self._charge(14 * len(items))
    _check_keys(items)
    self._target(set).update(items)

  def _pop(self, _):
    self._stack.pop()

  def _pop_mark_op(self, _):
    self._charge(len(self._pop_mark()))

  def _dup(self, _):
    self._stack.append(self._stack[-1])

  def _put(self, index):
    if not 0 <= index < _MAX_MEMO_INDEX:
      raise ValueError(f'memo index beyond {_MAX_MEMO_INDEX}')
    self._charge(6)  # a memo entry and its int key
    self._memo[index] = self._stack[-1]

  def _memoize(self, _):
    self._put(len(self._memo))

  def _get(self, index):
    self._stack.append(self._memo[index])

  def _global(self, arg):
    self._stack.append(_resolve(*arg.split(' ', 1), self._budget, self._classes))

  def _stack_global(self, _):
    name, module = self._stack.pop(), self._stack.pop()
    self._stack.append(_resolve(module, name, self._budget, self._classes))

  def _reduce(self, _):
    args, func = self._stack.pop(), self._stack.pop()
    if not isinstance(args, tuple):
      raise TypeError('REDUCE arguments are not a tuple')
    if _is_stand_in_class(func):
      self._charge(16)  # a model class: its pickled arguments mean nothing here
      self._stack.append(func())
    elif func in _CALLABLES:
      self._stack.append(func(self._budget, *args))
    else:
      raise TypeError(f'calls a {type(func).__name__}, which is not an allowed function')

  def _newobj(self, _):
    args, cls = self._stack.pop(), self._stack.pop()
    if not (isinstance(args, tuple) and _is_stand_in_class(cls)):
      raise TypeError('NEWOBJ of something that is not a model class')
    self._charge(16)
    self._stack.append(cls())

  def _build(self, _):
    state, target = self._stack.pop(), self._stack[-1]
    if isinstance(target, dict):
      return  # attributes of an OrderedDict (a state_dict's `_metadata`): not weights
    if not isinstance(target, StandIn):
      raise TypeError(f'sets the state of a {type(target).__name__}')
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
      parts = [s for s in state if s is not None]
    else:
      parts = [state]
    for part in parts:
      if not isinstance(part, dict):
        raise TypeError('an object state that is not a dict')
      self._charge(6 * len(part))  # copied: a memoised state is charged each time
      target.state.update(part)

  def _persistent_id(self, _):
    self._stack.append(self._persistent_load(self._stack.pop()))

  def _persistent_id_text(self, pid):
    self._stack.append(self._persistent_load(pid))

  def _proto(self, version):
    if version > 5:
      raise ValueError(f'unknown pickle protocol {version}')

  def _nothing(self, _):
    pass

  def _stop(self, _):
    self._result = self._stack.pop()


def _pushes(value):
  return lambda machine, _: machine._stack.append(value)  # pylint: disable=protected-access


def _pushes_new(factory, units):
  def handler(machine, _):
    machine._charge(units)  # pylint: disable=protected-access
    machine._stack.append(factory())  # pylint: disable=protected-access
  return handler


def _pops_tuple(n):
  """The handler of TUPLE1/2/3: the top `n` items become one tuple."""
  def handler(machine, _):
    stack = machine._stack  # pylint: disable=protected-access
    if len(stack) < n:
      raise IndexError('stack underflow')
    machine._charge(6)  # pylint: disable=protected-access
    items = tuple(stack[len(stack) - n:])
    del stack[len(stack) - n:]
    stack.append(items)
  return handler


def _set_items(budget, target, items):
  if len(items) % 2:
    raise ValueError('an odd number of dict items')
  budget.charge(3 * len(items))  # a dict entry, with room to grow: about 48 bytes
  _check_keys(items[::2])
  target.update(zip(items[::2], items[1::2]))


# Every opcode torch's pickles use (protocols 0-5); the others (EXT*, INST, OBJ, NEWOBJ_EX,
# out-of-band buffers) are refused.
_u = _Unpickler
_HANDLERS = {
    **{name: _u._push_arg for name in (
        'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4', 'FLOAT',
        'BINFLOAT', 'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'BINBYTES', 'SHORT_BINBYTES',
        'BINBYTES8', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8')},
    'NONE': _pushes(None), 'NEWTRUE': _pushes(True), 'NEWFALSE': _pushes(False),
    'EMPTY_TUPLE': _pushes(()), 'EMPTY_LIST': _pushes_new(list, 8),
    'EMPTY_DICT': _pushes_new(dict, 10), 'EMPTY_SET': _pushes_new(set, 28),
    'MARK': _u._mark, 'TUPLE': _u._tuple_mark, 'TUPLE1': _pops_tuple(1),
    'TUPLE2': _pops_tuple(2), 'TUPLE3': _pops_tuple(3), 'LIST': _u._list, 'DICT': _u._dict,
    'FROZENSET': _u._frozenset, 'APPEND': _u._append, 'APPENDS': _u._appends,
    'SETITEM': _u._set_item, 'SETITEMS': _u._set_items_mark, 'ADDITEMS': _u._add_items,
    'POP': _u._pop, 'POP_MARK': _u._pop_mark_op, 'DUP': _u._dup,
    'PUT': _u._put, 'BINPUT': _u._put, 'LONG_BINPUT': _u._put, 'MEMOIZE': _u._memoize,
    'GET': _u._get, 'BINGET': _u._get, 'LONG_BINGET': _u._get,
    'GLOBAL': _u._global, 'STACK_GLOBAL': _u._stack_global,
    'REDUCE': _u._reduce, 'NEWOBJ': _u._newobj, 'BUILD': _u._build,
    'BINPERSID': _u._persistent_id, 'PERSID': _u._persistent_id_text,
    'PROTO': _u._proto, 'FRAME': _u._nothing, 'STOP': _u._stop,
}
del _u


# ----------------------------------------------------------------------------- the two formats

def _storage_reference(pid, length):
  """(element type, key, numel) of a persistent id `('storage', type, key, location, numel…)`."""
  if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == 'storage'):
    shape = f'a {len(pid)}-tuple' if isinstance(pid, tuple) else f'a {type(pid).__name__}'
    raise _Damaged(f'a persistent id is not a storage reference (found {shape})')
  element_type, key, location, numel = pid[1:5]
  if not (isinstance(element_type, _ElementType) and isinstance(key, str) and
          isinstance(location, str) and _is_count(numel)):
    raise _Damaged(f'the storage reference with key {_shown(key)} is malformed')
  return element_type, key, numel


_LOCAL_HEADER = struct.Struct('<4s22xHH')  # signature, …, name and extra field lengths


class _ZipRecords:
  """The records of a torch zip archive, each checked against the file's layout first.

  torch stores every record uncompressed, once, each in its own byte range: so each
  record's claimed size must equal its stored size, its local header must name it, and
  no two records may overlap (nor reach the central directory), before any is read. The
  records read then hold at most the file's bytes, each read once.
  """

  def __init__(self, file):
    self._file = file
    try:
      self.archive = zipfile.ZipFile(file)
    except _LIBRARY_ERRORS as e:
      raise _Damaged(f'it is a truncated or damaged zip archive ({_shown(str(e))})') from None
    infos = self.archive.infolist()
    if len(self.archive.NameToInfo) != len(infos):
      raise _Damaged('two of its records have the same name')
    self._starts = {}
    end = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
      start = self._check(info, end)
      self._starts[info.filename] = start
      end = start + info.compress_size
    if end > self.archive.start_dir:
      raise _Damaged('its last record overlaps its central directory')

  def _check(self, info, end_of_previous):
    """Where `info`'s data starts, once its local header and place are checked."""
    name = _shown(info.filename)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x61:
      raise _Damaged(f'the record {name} is compressed or encrypted; torch never does that')
    if info.compress_size != info.file_size:
      raise _Damaged(f'the record {name} claims {info.compress_size} stored bytes for '
                     f'{info.file_size} bytes of data')
    if info.header_offset < end_of_previous:
      raise _Damaged(f'the record {name} overlaps another record')
    self._file.seek(info.header_offset)
    header = self._file.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
      raise _Damaged(f'the record {name} lies outside the file')
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    encoding = 'utf-8' if info.flag_bits & 0x800 else 'cp437'
    if (signature != b'PK\x03\x04' or
        self._file.read(name_length) != info.orig_filename.encode(encoding)):
      raise _Damaged(f'the record {name} has no local header naming it where the central '
                     'directory says')
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length

  def info(self, name):
    try:
      return self.archive.getinfo(name)
    except KeyError:
      raise _Damaged(f'the record {_shown(name)} is missing') from None

  def read(self, info, buffer=None):
    """The record's bytes (into `buffer`, a writable bytearray of its size, if given)."""
    self._file.seek(self._starts[info.filename])
    if buffer is None:
      data = self._file.read(info.file_size)
    else:
      data = buffer
      if self._file.readinto(buffer) != info.file_size:
        data = b''
    if len(data) != info.file_size:
      raise _Damaged(f'the record {_shown(info.filename)} is cut short')
    if zlib.crc32(data) != info.CRC:
      raise _Damaged(f'the record {_shown(info.filename)} is damaged (bad CRC-32)')
    return data


class _ZipStorages:
  """persistent_load of the zip format: each storage is the record `<root>/data/<key>`."""

  def __init__(self, records: _ZipRecords, root: str, byteorder: str, budget: Budget):
    self._records, self._root, self._byteorder = records, root, byteorder
    self._budget = budget
    self._storages = {}

  def __call__(self, pid):
    element_type, key, numel = _storage_reference(pid, 5)
    self._budget.charge(2 + len(key) // 8)
    if key not in self._storages:  # read once, however many tensors view it
      self._budget.charge(40)
      data = self._read(key, numel * element_type.dtype.itemsize)
      self._storages[key] = _Storage(element_type, data, self._byteorder)
    return self._storages[key]

  def _read(self, key, nbytes):
    info = self._records.info(f'{self._root}/data/{key}')
    if info.file_size != nbytes:
      raise _Damaged(f'the record {_shown(info.filename)} holds {info.file_size} bytes but '
                     f'its pickle declares {nbytes}')
    buffer = bytearray(nbytes)
    return np.frombuffer(self._records.read(info, buffer), np.uint8)


def _read_zip(file, name, budget):
  records = _ZipRecords(file)
  with records.archive:
    pickles = [n for n in records.archive.namelist()
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise _Damaged('it is a zip archive but not a PyTorch checkpoint (no <root>/data.pkl)')
    root = pickles[0][:-len('/data.pkl')]
    byteorder = _zip_byteorder(records, root)
    data_pkl = records.read(records.info(pickles[0]))
    budget.grant(name, len(data_pkl))
    storages = _ZipStorages(records, root, byteorder, budget)
    return _Unpickler(budget, {}, storages).load(io.BytesIO(data_pkl))


def _zip_byteorder(records, root):
  """Storages are in the saving machine's byte order, recorded since torch 2.1."""
  try:
    info = records.archive.getinfo(f'{root}/byteorder')
  except KeyError:
    return '<'
  orders = {b'little': '<', b'big': '>'}
  if info.file_size > 8:
    raise _Damaged('its byteorder record is not little or big')
  recorded = records.read(info)
  if recorded not in orders:
    shown = _shown(recorded.decode('latin-1'))
    raise _Damaged(f'its byteorder record is {shown}, not little or big')
  return orders[recorded]


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001


class _LegacyStorages:
  """persistent_load of the legacy format: storages are filled from the stream's tail."""

  def __init__(self, budget: Budget, file_size: int):
    self._budget, self._left = budget, file_size  # declared storages cannot exceed the file
    self._storages, self._filled = {}, set()

  def __call__(self, pid):
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == 'module':
      if not _is_stand_in_class(pid[1]):  # ('module', class, source file, source)
        raise _Damaged('a module reference does not name a model class')
      return pid[1]
    element_type, key, numel = _storage_reference(pid, 6)
    self._budget.charge(2 + len(key) // 8)
    if key not in self._storages:
      self._budget.charge(40)
      nbytes = numel * element_type.dtype.itemsize
      self._left -= nbytes
      if self._left < 0:
        raise _Damaged('its pickle declares more storage bytes than the file holds')
      self._storages[key] = _Storage(element_type, np.zeros(nbytes, np.uint8))
    storage = self._storages[key]
    view = pid[5]
    return storage if view is None else self._storage_view(storage, view)

  def _storage_view(self, root, view):
    """A slice of a root storage, in files of torch < 0.4."""
    if not (isinstance(view, tuple) and len(view) == 3 and
            all(map(_is_count, view[1:]))):
      raise _Damaged('a storage view reference is malformed')
    self._budget.charge(40)
    _, offset, numel = view
    itemsize = root.element_type.dtype.itemsize
    if (offset + numel) * itemsize > root.data.size:
      raise _Damaged('a storage view reaches past the end of its storage')
    return _Storage(root.element_type, root.data[offset * itemsize:(offset + numel) * itemsize])

  def fill(self, keys, stream):
    """Reads each storage's data: an 8-byte little-endian element count, then the bytes."""
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
      raise _Damaged('its list of storage keys is malformed')
    for key in keys:
      storage = self._storages.get(key)
      if storage is None or key in self._filled:
        raise _Damaged(f'it lists storage {_shown(key)!r} that its pickle does not use, '
                       'or lists it twice')
      numel = int.from_bytes(stream.read(8), 'little')
      if numel * storage.element_type.dtype.itemsize != storage.data.size:
        raise _Damaged(f'storage {_shown(key)!r} holds {numel} elements but its pickle '
                       f'declares {storage.data.size // storage.element_type.dtype.itemsize}')
      if stream.readinto(storage.data) != storage.data.size:
        raise _Damaged(f'it is truncated: storage {_shown(key)!r} is cut short')
      self._filled.add(key)
    missing = sorted(set(self._storages) - self._filled)
    if missing:
      raise _Damaged(f'the data of storage {_shown(missing[0])!r} is missing')


def _read_legacy(data: bytes, name, budget):
  budget.grant(name, len(data))  # the pickles' size is known only once they are read
  classes = {}
  stream = io.BytesIO(data)
  if _Unpickler(budget, classes).load(stream) != _LEGACY_MAGIC:
    raise _Damaged('it is a pickle but not one written by torch.save (no magic number)')
  version = _Unpickler(budget, classes).load(stream)
  if version != _LEGACY_VERSION:
    shown = str(version) if isinstance(version, int) else f'a {type(version).__name__}'
    raise _Damaged(f'its legacy format version is {shown}, not {_LEGACY_VERSION}')
  if not isinstance(_Unpickler(budget, classes).load(stream), dict):  # the saving system's
    raise _Damaged('its system-info record is malformed')  # info: unused, storages are LE
  storages = _LegacyStorages(budget, len(data))
  obj = _Unpickler(budget, classes, storages).load(stream)
  storages.fill(_Unpickler(budget, classes).load(stream), stream)
  return obj


# What the libraries the reader uses raise on bytes they cannot make sense of.
_LIBRARY_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, zlib.error,
                   EOFError, UnicodeError, ValueError, OverflowError, NotImplementedError)


def read(path, budget: Budget | None = None):
  """The object a .pth file holds: dicts, lists, numpy arrays and `StandIn`s for modules.

  Raises UnsafeCheckpointError (names the refused global), MalformedCheckpointError or
  CheckpointNotFoundError, each with a one-line message naming the file. `budget`, if
  given, is granted what this file may cost and charged (see `Budget`).
  """
  file = fileio.path(path)
  if not file.is_file():
    raise errors.CheckpointNotFoundError(f'PyTorch checkpoint {str(file)!r} does not exist (or is '
                                  'not a file).')
  budget = budget if budget is not None else Budget()
  try:
    with file.open('rb') as f:
      head = f.read(4)
      f.seek(0)
      if head.startswith(b'PK'):
        return _read_zip(f, str(file), budget)
      if head.startswith(b'\x80'):  # every pickle of protocol >= 2 starts with PROTO
        return _read_legacy(f.read(), str(file), budget)
  except errors.UserError:
    raise  # the budget's own error, which names the file
  except _Refused as e:
    raise UnsafeCheckpointError(
        f'Refused the PyTorch checkpoint {str(file)!r}: {e} is not allowed; a checkpoint '
        'holds tensors, not code, and nothing in this one was run.') from None
  except _Damaged as e:
    raise MalformedCheckpointError(_damaged_message(str(file), e)) from None
  except MemoryError:
    raise MalformedCheckpointError(_damaged_message(
        str(file), 'this machine ran out of memory reading it')) from None
  except RecursionError:
    raise MalformedCheckpointError(_damaged_message(
        str(file), 'it is nested too deeply')) from None
  except _LIBRARY_ERRORS as e:
    raise MalformedCheckpointError(_damaged_message(
        str(file), f'it is truncated or damaged ({type(e).__name__}: '
        f'{_shown(str(e))})')) from None
  raise MalformedCheckpointError(
      f'{str(file)!r} is not a PyTorch checkpoint (neither a zip archive nor a pickle); pass '
      'a .pth written by torch.save.')
