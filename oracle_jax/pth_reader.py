"""Reads PyTorch checkpoints (.pth) as data, never as code, and without PyTorch.

A `.pth` is a pickle, and a pickle can call any Python function it names. This reader
replays it on a small stack machine of its own (opcodes decoded by `pickletools`) that
can only call the functions of this module, and only after every global the pickle
names has passed an exact allowlist — at least as strict as `torch.load(weights_only=True)`:

* `torch._utils._rebuild_tensor`, `_rebuild_tensor_v2`, `_rebuild_tensor_v3`,
  `_rebuild_parameter`, `_rebuild_parameter_with_state`: replaced by functions here that
  return numpy views of the storages, bounds-checked.
* `torch.<Type>Storage`, `torch.storage.UntypedStorage` and torch's dtypes
  (`torch.float32`, …): markers naming an element type.
* `collections.OrderedDict`, `builtins.set`, `torch.Size`: containers of plain data.
* Model classes, for whole pickled `nn.Module`s: a CapitalisedName under `torch.nn.`, in
  `__main__`, or in a module outside the standard library, torch and numpy. Such a class
  is never imported: it becomes an inert `StandIn` subclass made here, whose construction
  keeps nothing but the pickled state, so naming `models.resnet.ResNet` runs nothing and
  `subprocess.Popen` or `os.system` is refused like any other global.

Every other global (`builtins.exec`, `copyreg`, `os`, `posix`, `subprocess`, `importlib`,
numpy internals, torch functions that are not tensor rebuilds, …) and every opcode that
could reach code another way (EXT*, INST, OBJ, NEWOBJ_EX) is refused before the first
opcode runs (a global built on the stack, STACK_GLOBAL, before it is used).

Tensors are numpy views of their storage, as in PyTorch: a storage is read once, however
many tensors share it, so the memory used is the sum of the storages the file declares
(and holds: each declared size is checked against the bytes present). Every view must lie
inside its storage and must not read an element twice (no zero or overlapping strides),
so no tensor is larger than its storage.

Formats: zip (torch >= 1.6: `<root>/data.pkl` and one record per storage) and the legacy
stream (torch < 1.6, or `_use_new_zipfile_serialization=False`: the pickles of a magic
number, a protocol version and the system info, the object's pickle, the list of storage
keys, then each storage as an 8-byte little-endian element count and its raw bytes).
"""
import collections
import io
import pickletools
import sys
import zipfile
from typing import NamedTuple

import ml_dtypes
import numpy as np

from oracle_jax import errors, fileio


class UnsafeCheckpointError(errors.UserError, ValueError):
  """The checkpoint's pickle asks to run code: it names a global outside the allowlist."""


class MalformedCheckpointError(errors.UserError, ValueError):
  """The file is not a well-formed PyTorch checkpoint (damaged, truncated, inconsistent)."""


CheckpointNotFoundError = errors.CheckpointNotFoundError  # the one class (errors.py)


class _Refused(Exception):
  """Raised inside the reader; `read` adds the file's name and the fix."""


class _Damaged(Exception):
  """Raised inside the reader; `read` adds the file's name."""


def _shown(text, limit=80):
  """Text from the file as one printable line (a hostile name may hold newlines)."""
  if not isinstance(text, str):  # str() of a hostile object may not even terminate
    return f'<{type(text).__name__}>'
  if not text.isprintable():
    text = ascii(text)[1:-1]
  return text if len(text) <= limit else text[:limit] + '...'


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


def _is_count(value):
  return type(value) is int and value >= 0  # pylint: disable=unidiomatic-typecheck  (no bools)


def _check_index_tuple(what, values):
  if not (isinstance(values, tuple) and len(values) <= 64 and all(map(_is_count, values))):
    raise _Damaged(f'a tensor {what} is not a tuple of non-negative ints')


def _view(storage, dtype, offset, size, stride):
  """The tensor `torch.as_strided(storage, size, stride, offset)`, checked to fit."""
  if not isinstance(storage, _Storage):
    raise _Damaged('a tensor is built on something that is not a storage')
  _check_index_tuple('size', size)
  _check_index_tuple('stride', stride)
  _check_index_tuple('storage offset', (offset,))
  if len(size) != len(stride):
    raise _Damaged(f'a tensor has {len(size)} sizes but {len(stride)} strides')
  if storage.data.size % dtype.itemsize:
    raise _Damaged(f'a storage of {storage.data.size} bytes does not hold whole {dtype} '
                   'elements')
  elements = storage.data.view(dtype.newbyteorder(storage.byteorder))
  if 0 in size:
    return np.zeros(size, dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= elements.size:
    raise _Damaged(f'a tensor view (size {size}, stride {stride}, offset {offset}) reaches '
                   f'element {last} of a storage of {elements.size} elements')
  # Non-overlapping: each stride, taken from the smallest, steps past all the elements
  # spanned by the smaller ones. This refuses stride 0 (a 1 MB file cannot become 8 GiB).
  span = 1
  for n, s in sorted((d for d in zip(size, stride) if d[0] > 1), key=lambda d: d[1]):
    if s < span:
      raise _Damaged(f'a tensor view (size {size}, stride {stride}) reads storage '
                     'elements more than once')
    span += (n - 1) * s
  view = np.lib.stride_tricks.as_strided(
      elements[offset:], shape=size, strides=[s * dtype.itemsize for s in stride])
  return view if view.dtype.isnative else view.astype(dtype)


def _check_metadata(metadata):
  # torch's lazy negation/conjugation bits: the stored values are not the tensor's.
  if metadata is not None and not isinstance(metadata, dict):
    raise _Damaged('a tensor has metadata that is not a dict')
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

def _new_ordered_dict(items=()):
  """OrderedDict(); Python 2 pickled one as OrderedDict([[key, value], ...])."""
  if not (isinstance(items, (list, tuple)) and
          all(isinstance(i, (list, tuple)) and len(i) == 2 for i in items)):
    raise _Damaged('an OrderedDict is built from something that is not a list of pairs')
  _check_plain_keys([k for k, _ in items])
  return collections.OrderedDict(items)


_PLAIN_KEYS = (str, int, float, bool, bytes, type(None))  # hashing them runs nothing


def _check_plain_keys(keys):
  if not all(isinstance(k, _PLAIN_KEYS) for k in keys):
    raise _Damaged('a dict key or set member is not a plain str/number')


def _new_set(items=()):
  if not isinstance(items, list):
    raise _Damaged('a set is built from something that is not a list')
  _check_plain_keys(items)
  return set(items)


def _new_size(dims):
  _check_index_tuple('size', dims)
  return dims


_REBUILD_FUNCTIONS = {
    '_rebuild_tensor': _rebuild_tensor, '_rebuild_tensor_v2': _rebuild_tensor_v2,
    '_rebuild_tensor_v3': _rebuild_tensor_v3, '_rebuild_parameter': _rebuild_parameter,
    '_rebuild_parameter_with_state': _rebuild_parameter,
}
_ALLOWED_GLOBALS = {
    **{('torch._utils', name): f for name, f in _REBUILD_FUNCTIONS.items()},
    **{('torch', name): _ElementType(name, np.dtype(d)) for name, d in _STORAGE_TYPES.items()},
    ('torch.storage', 'UntypedStorage'): _UNTYPED, ('torch', 'UntypedStorage'): _UNTYPED,
    **{('torch', name): np.dtype(d) for name, d in _TORCH_DTYPES.items()},
    ('collections', 'OrderedDict'): _new_ordered_dict,
    ('builtins', 'set'): _new_set, ('__builtin__', 'set'): _new_set,  # Python 2's name
    ('torch', 'Size'): _new_size,
}
_CALLABLES = frozenset(f for f in _ALLOWED_GLOBALS.values() if callable(f))


def _resolve(module, name):
  """What the global `module.name` means here; refuses everything outside the allowlist."""
  if not (isinstance(module, str) and isinstance(name, str)):
    raise _Damaged('a global is named by something that is not a string')
  allowed = _ALLOWED_GLOBALS.get((module, name))
  if allowed is not None:
    return allowed
  if module == 'torch._utils' and name.startswith('_rebuild_'):
    raise _Damaged(f'it holds a kind of tensor this reader does not read ({module}.{name}); '
                   'only dense tensors are supported')
  if _is_model_class(module, name):
    return type(name, (StandIn,), {'__module__': module, '__qualname__': name,
                                   '__slots__': ()})
  raise _Refused(f'the global {_shown(module)}.{_shown(name)} named in its pickle')


# ----------------------------------------------------------------------------- the pickle machine

def _no_persistent_ids(pid):
  del pid
  raise _Damaged('a pickle that should hold plain data refers to a storage')


class _Unpickler:
  """Replays one pickle, calling nothing but the allowlisted functions above."""

  def __init__(self, persistent_load=_no_persistent_ids):
    self._persistent_load = persistent_load
    self._stack, self._marks, self._memo, self._result = [], [], {}, None

  def load(self, stream):
    """Reads one pickle from `stream` (up to its STOP) and returns its object."""
    start = stream.tell()
    for op, arg, _ in self._opcodes(stream):  # refuse before anything runs
      if op.name in ('GLOBAL', 'INST'):
        _resolve(*arg.split(' ', 1))
      if op.name not in _HANDLERS:
        raise _Refused(f'the pickle opcode {op.name} (never written by torch)')
    stream.seek(start)
    self._stack, self._marks, self._memo = [], [], {}
    for op, arg, position in self._opcodes(stream):
      try:
        _HANDLERS[op.name](self, arg)
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

  def _pop_mark(self):
    items, self._stack = self._stack, self._marks.pop()
    return items

  def _mark(self, _):
    self._marks.append(self._stack)
    self._stack = []

  def _push_arg(self, arg):
    self._stack.append(arg)

  def _tuple_mark(self, _):
    items = self._pop_mark()  # first: it replaces self._stack
    self._stack.append(tuple(items))

  def _list(self, _):
    items = self._pop_mark()
    self._stack.append(items)

  def _dict(self, _):
    target = {}
    _set_items(target, self._pop_mark())
    self._stack.append(target)

  def _frozenset(self, _):
    items = self._pop_mark()
    _check_plain_keys(items)
    self._stack.append(frozenset(items))

  def _target(self, kind):
    target = self._stack[-1]
    if not isinstance(target, kind):
      raise TypeError(f'adds items to a {type(target).__name__}')
    return target

  def _append(self, _):
    value = self._stack.pop()
    self._target(list).append(value)

  def _appends(self, _):
    items = self._pop_mark()
    self._target(list).extend(items)

  def _set_item(self, _):
    value, key = self._stack.pop(), self._stack.pop()
    _set_items(self._target(dict), [key, value])

  def _set_items_mark(self, _):
    items = self._pop_mark()
    _set_items(self._target(dict), items)

  def _add_items(self, _):
    items = self._pop_mark()
    _check_plain_keys(items)
    self._target(set).update(items)

  def _pop(self, _):
    self._stack.pop()

  def _pop_mark_op(self, _):
    self._pop_mark()

  def _dup(self, _):
    self._stack.append(self._stack[-1])

  def _put(self, index):
    self._memo[index] = self._stack[-1]

  def _memoize(self, _):
    self._memo[len(self._memo)] = self._stack[-1]

  def _get(self, index):
    self._stack.append(self._memo[index])

  def _global(self, arg):
    self._stack.append(_resolve(*arg.split(' ', 1)))

  def _stack_global(self, _):
    name, module = self._stack.pop(), self._stack.pop()
    self._stack.append(_resolve(module, name))

  def _reduce(self, _):
    args, func = self._stack.pop(), self._stack.pop()
    if not isinstance(args, tuple):
      raise TypeError('REDUCE arguments are not a tuple')
    if _is_stand_in_class(func):
      self._stack.append(func())  # a model class: its pickled arguments mean nothing here
    elif func in _CALLABLES:
      self._stack.append(func(*args))
    else:
      raise TypeError(f'calls a {type(func).__name__}, which is not an allowed function')

  def _newobj(self, _):
    args, cls = self._stack.pop(), self._stack.pop()
    if not (isinstance(args, tuple) and _is_stand_in_class(cls)):
      raise TypeError('NEWOBJ of something that is not a model class')
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


def _pushes_new(factory):
  return lambda machine, _: machine._stack.append(factory())  # pylint: disable=protected-access


def _pops_tuple(n):
  """The handler of TUPLE1/2/3: the top `n` items become one tuple."""
  def handler(machine, _):
    stack = machine._stack  # pylint: disable=protected-access
    if len(stack) < n:
      raise IndexError('stack underflow')
    items = tuple(stack[len(stack) - n:])
    del stack[len(stack) - n:]
    stack.append(items)
  return handler


def _set_items(target, items):
  if len(items) % 2:
    raise ValueError('an odd number of dict items')
  _check_plain_keys(items[::2])
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
    'EMPTY_TUPLE': _pushes(()), 'EMPTY_LIST': _pushes_new(list),
    'EMPTY_DICT': _pushes_new(dict), 'EMPTY_SET': _pushes_new(set),
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


# What zipfile raises on a damaged archive (a bad CRC, a cut, nonsense in its directory).
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, UnicodeDecodeError, NotImplementedError,
               ValueError)


class _ZipRecords:
  """The records of a torch zip archive, each read whole and only from within the file.

  torch stores every record uncompressed, so no record is larger than the file, and
  records that overlap (several names for one byte range) cannot add up to more than it.
  """

  def __init__(self, file):
    self._size = self._budget = file.seek(0, io.SEEK_END)
    file.seek(0)
    try:
      self.archive = zipfile.ZipFile(file)
    except _ZIP_ERRORS as e:
      raise _Damaged(f'it is a truncated or damaged zip archive ({_shown(str(e))})') from None

  def info(self, name):
    try:
      return self.archive.getinfo(name)
    except KeyError:
      raise _Damaged(f'the record {_shown(name)} is missing') from None

  def read(self, info):
    name = _shown(info.filename)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x61:
      raise _Damaged(f'the record {name} is compressed or encrypted; torch never does that')
    if not 0 <= info.header_offset <= self._size - info.file_size:
      raise _Damaged(f'the record {name} lies outside the file')
    self._budget -= info.file_size
    if self._budget < 0:
      raise _Damaged('its records hold more bytes than the file (overlapping records)')
    try:
      return self.archive.read(info)
    except _ZIP_ERRORS as e:
      raise _Damaged(f'the record {name} is damaged ({_shown(str(e))})') from None


class _ZipStorages:
  """persistent_load of the zip format: each storage is the record `<root>/data/<key>`."""

  def __init__(self, records: _ZipRecords, root: str, byteorder: str):
    self._records, self._root, self._byteorder = records, root, byteorder
    self._storages = {}

  def __call__(self, pid):
    element_type, key, numel = _storage_reference(pid, 5)
    if key not in self._storages:  # read once, however many tensors view it
      data = self._read(key, numel * element_type.dtype.itemsize)
      self._storages[key] = _Storage(element_type, data, self._byteorder)
    return self._storages[key]

  def _read(self, key, nbytes):
    info = self._records.info(f'{self._root}/data/{key}')
    if info.file_size != nbytes:
      raise _Damaged(f'the record {_shown(info.filename)} holds {info.file_size} bytes but '
                     f'its pickle declares {nbytes}')
    return np.frombuffer(bytearray(self._records.read(info)), np.uint8)


def _read_zip(file):
  records = _ZipRecords(file)
  with records.archive:
    pickles = [n for n in records.archive.namelist()
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise _Damaged('it is a zip archive but not a PyTorch checkpoint (no <root>/data.pkl)')
    root = pickles[0][:-len('/data.pkl')]
    byteorder = _zip_byteorder(records, root)
    data_pkl = io.BytesIO(records.read(records.info(pickles[0])))
    return _Unpickler(_ZipStorages(records, root, byteorder)).load(data_pkl)


def _zip_byteorder(records, root):
  """Storages are in the saving machine's byte order, recorded since torch 2.1."""
  try:
    info = records.archive.getinfo(f'{root}/byteorder')
  except KeyError:
    return '<'
  recorded = records.read(info)
  orders = {b'little': '<', b'big': '>'}
  if recorded not in orders:
    shown = _shown(recorded.decode('latin-1'))
    raise _Damaged(f'its byteorder record is {shown}, not little or big')
  return orders[recorded]


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001


class _LegacyStorages:
  """persistent_load of the legacy format: storages are filled from the stream's tail."""

  def __init__(self, budget: int):
    self._budget = budget  # the file's size: declared storages cannot exceed it
    self._storages, self._filled = {}, set()

  def __call__(self, pid):
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == 'module':
      if not _is_stand_in_class(pid[1]):  # ('module', class, source file, source)
        raise _Damaged('a module reference does not name a model class')
      return pid[1]
    element_type, key, numel = _storage_reference(pid, 6)
    if key not in self._storages:
      nbytes = numel * element_type.dtype.itemsize
      self._budget -= nbytes
      if self._budget < 0:
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
      raw = stream.read(storage.data.size)
      if len(raw) != storage.data.size:
        raise _Damaged(f'it is truncated: storage {_shown(key)!r} is cut short')
      storage.data[:] = np.frombuffer(raw, np.uint8)
      self._filled.add(key)
    missing = sorted(set(self._storages) - self._filled)
    if missing:
      raise _Damaged(f'the data of storage {_shown(missing[0])!r} is missing')


def _read_legacy(data: bytes):
  stream = io.BytesIO(data)
  if _Unpickler().load(stream) != _LEGACY_MAGIC:
    raise _Damaged('it is a pickle but not one written by torch.save (no magic number)')
  version = _Unpickler().load(stream)
  if version != _LEGACY_VERSION:
    shown = str(version) if isinstance(version, int) and abs(version) < 10**18 else _shown(version)
    raise _Damaged(f'its legacy format version is {shown}, not {_LEGACY_VERSION}')
  if not isinstance(_Unpickler().load(stream), dict):  # the saving system's info: unused,
    raise _Damaged('its system-info record is malformed')  # storages are little-endian
  storages = _LegacyStorages(budget=len(data))
  obj = _Unpickler(storages).load(stream)
  storages.fill(_Unpickler().load(stream), stream)
  return obj


def read(path):
  """The object a .pth file holds: dicts, lists, numpy arrays and `StandIn`s for modules.

  Raises UnsafeCheckpointError (names the refused global), MalformedCheckpointError or
  CheckpointNotFoundError, each with a one-line message naming the file.
  """
  file = fileio.path(path)
  if not file.is_file():
    raise CheckpointNotFoundError(f'PyTorch checkpoint {str(file)!r} does not exist (or is '
                                  'not a file).')
  try:
    with file.open('rb') as f:
      head = f.read(4)
      f.seek(0)
      if head.startswith(b'PK'):
        return _read_zip(f)
      if head.startswith(b'\x80'):  # every pickle of protocol >= 2 starts with PROTO
        return _read_legacy(f.read())
  except _Refused as e:
    raise UnsafeCheckpointError(
        f'Refused the PyTorch checkpoint {str(file)!r}: {e} is not allowed; a checkpoint '
        'holds tensors, not code, and nothing in this one was run.') from None
  except _Damaged as e:
    raise MalformedCheckpointError(
        f'The PyTorch checkpoint {str(file)!r} cannot be read: {e}.') from None
  raise MalformedCheckpointError(
      f'{str(file)!r} is not a PyTorch checkpoint (neither a zip archive nor a pickle); pass '
      'a .pth written by torch.save.')
