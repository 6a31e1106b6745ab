"""A .pth file is data, never code: hostile, malformed and genuine checkpoints.

Hostile and malformed files are written by hand (pickle opcodes in torch's zip and legacy
layouts), so each case is exactly the bytes it names. Every payload would create a marker
file if it ran (`test_payloads_are_live` shows that with plain `pickle.loads`); the reader
must refuse it naming the global, and the marker must never appear.
"""
import os
import pickle
import struct
import subprocess
import sys
import types
import warnings
import zipfile

import jax
import numpy as np
import pytest
from conftest import REFERENCE_DIR
from pth_hostile import call, g, legacy_split, v

from oracle_jax import errors, models
from oracle_jax.interop import pth_reader, torch_import

GENUINE_STATE_DICT = REFERENCE_DIR / 'torch' / 'cifar100_resnet20_state_dict.pth'
GENUINE_MODULE = REFERENCE_DIR / 'torch' / 'cifar10_resnet20_pickled_module.pth'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ----------------------------------------------------------------------------- a pickle assembler (its opcodes: pth_hostile)

def dict_of(items):
  return b'}(' + b''.join(v(k) + value for k, value in items.items()) + b'u'


def put(index):
  return b'r' + index.to_bytes(4, 'little')  # LONG_BINPUT


def get(index):
  return b'j' + index.to_bytes(4, 'little')  # LONG_BINGET


def program(body):
  return b'\x80\x02' + body + b'.'


def body_of(data_pkl):
  assert data_pkl[:2] == b'\x80\x02' and data_pkl[-1:] == b'.'
  return data_pkl[2:-1]


def storage_ref(key, numel, storage_type='FloatStorage', legacy=False):
  fields = v('storage') + g('torch', storage_type) + v(key) + v('cpu') + v(numel)
  return b'(' + fields + (v(None) if legacy else b'') + b'tQ'


def tensor(key, numel, size, stride, offset=0, legacy=False, storage_type='FloatStorage',
           rebuild='_rebuild_tensor_v2', extra=()):
  return call(g('torch._utils', rebuild), storage_ref(key, numel, storage_type, legacy),
              v(offset), v(tuple(size)), v(tuple(stride)), v(False),
              call(g('collections', 'OrderedDict')), *extra)


def write_zip(path, data_pkl, storages, root='archive', byteorder=b'little',
              compression=zipfile.ZIP_STORED):
  """torch's zip layout; `storages` maps keys to arrays (or raw bytes)."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr(f'{root}/data.pkl', data_pkl)
    archive.writestr(f'{root}/byteorder', byteorder)
    for key, data in storages.items():
      raw = data if isinstance(data, bytes) else data.tobytes()
      archive.writestr(f'{root}/data/{key}', raw, compress_type=compression)
    archive.writestr(f'{root}/version', '3\n')
  return path


def legacy_header():
  info = {'protocol_version': 1001, 'little_endian': True,
          'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
  return b''.join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, info))


def write_legacy(path, main_pkl, storages, header=None):
  """torch's legacy stream; `storages` maps keys to arrays (count + little-endian bytes)."""
  tail = pickle.dumps(list(storages), protocol=2) + b''.join(
      a.size.to_bytes(8, 'little') + a.astype(a.dtype.newbyteorder('<')).tobytes()
      for a in storages.values())
  path.write_bytes((header if header is not None else legacy_header()) + main_pkl + tail)
  return path


def write(path, fmt, body, storages=None):
  """A checkpoint whose object is `body`, in format `fmt` ('zip' or 'legacy')."""
  storages = storages or {}
  if fmt == 'zip':
    return write_zip(path.with_suffix('.zip.pth'), program(body), storages)
  return write_legacy(path.with_suffix('.legacy.pth'), program(body), storages)


def state_dict_body(state_dict, legacy=False):
  """A state_dict pickle with one storage per tensor, and those storages."""
  items, storages = {}, {}
  for i, (name, array) in enumerate(state_dict.items()):
    array = array.copy(order='C')  # (np.ascontiguousarray makes a 0-d array 1-d)
    strides = tuple(s // array.itemsize for s in array.strides)
    storage_type = {np.float32: 'FloatStorage', np.int64: 'LongStorage'}[array.dtype.type]
    items[name] = tensor(str(i), array.size, array.shape, strides, legacy=legacy,
                         storage_type=storage_type)
    storages[str(i)] = array
  return dict_of(items), storages


def touched(marker):
  return os.path.exists(marker)


# ----------------------------------------------------------------------------- hostile payloads

def payloads(marker):
  """name of the global the reader must name → pickle body that would create `marker`."""
  m, touch = str(marker), f'touch {marker}'
  create = f'open({m!r}, "w").close()'
  os_system = call(g('builtins', 'getattr'), get(9000), v('system'))
  return {
      'builtins.exec': call(g('builtins', 'exec'), v(create)),
      'builtins.eval': call(g('builtins', 'eval'), v(create)),
      'builtins.open': call(g('builtins', 'open'), v(m), v('w')),
      'builtins.getattr': call(call(g('builtins', 'getattr'),
                                    call(g('builtins', '__import__'), v('os')), v('system')),
                               v(touch)),
      'builtins.__import__': (call(g('builtins', '__import__'), v('os')) + put(9000) + b'0' +
                              call(os_system, v(touch))),
      'os.system': call(g('os', 'system'), v(touch)),
      'posix.system': call(g('posix', 'system'), v(touch)),
      'nt.system': call(g('nt', 'system'), v(touch)),
      'subprocess.Popen': call(g('subprocess', 'Popen'), v(['touch', m])),
      # copyreg._reconstructor(cls, base, state) runs base.__init__(obj, state).
      'copyreg._reconstructor': call(g('copyreg', '_reconstructor'), g('subprocess', 'Popen'),
                                     g('subprocess', 'Popen'), v(['touch', m])),
      'importlib.import_module': (call(g('importlib', 'import_module'), v('os')) + put(9000) +
                                  b'0' + call(os_system, v(touch))),
      'pickle.loads': call(g('pickle', 'loads'),
                           v(program(call(g('posix', 'system'), v(touch))))),
      # The global built on the stack (protocol 4's STACK_GLOBAL) instead of named inline.
      'os.system (STACK_GLOBAL)': v('os') + v('system') + b'\x93(' + v(touch) + b'tR',
      # Not a class, so not a stand-in, even under torch.nn.
      'torch.nn.modules.conv.system': call(g('torch.nn.modules.conv', 'system'), v(touch)),
      # torch functions that are not tensor rebuilds.
      'torch.load': call(g('torch', 'load'), v(m)),
  }


NOT_RUNNABLE_HERE = {'nt.system', 'torch.nn.modules.conv.system', 'torch.load'}


def refused_name(case):
  return case.split(' ')[0]


@pytest.mark.parametrize('case', [c for c in payloads('m') if c not in NOT_RUNNABLE_HERE])
def test_payloads_are_live(case, tmp_path):
  """Plain pickle runs each payload: the reader's refusal below is what stops it."""
  marker = tmp_path / 'ran'
  result = pickle.loads(program(payloads(marker)[case]))
  if hasattr(result, 'wait'):
    result.wait()
  assert touched(marker)


@pytest.fixture(name='count_views')
def fixture_count_views(monkeypatch):
  """Counts tensors built: a refusal must come before the first one."""
  calls = []
  view = pth_reader._view  # pylint: disable=protected-access

  def counting(*args):
    calls.append(args)
    return view(*args)
  monkeypatch.setattr(pth_reader, '_view', counting)
  return calls


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('case', list(payloads('m')))
def test_payload_is_refused_by_api_and_cli(case, fmt, tmp_path, count_views):
  marker = tmp_path / 'ran'
  path = write(tmp_path / 'evil', fmt, payloads(marker)[case])
  with pytest.raises(pth_reader.UnsafeCheckpointError) as refusal:
    torch_import.load(str(path), 'resnet8', 10)
  message = str(refusal.value)
  assert f'the global {refused_name(case)} named in its pickle' in message
  assert str(path) in message and '\n' not in message
  with pytest.raises(SystemExit) as cli:
    torch_import.main([str(path), str(tmp_path / 'out'), '--model=resnet8', '--num_classes=10'])
  assert cli.value.code == 'error: ' + message
  assert not touched(marker) and not (tmp_path / 'out').exists() and not count_views


def genuine_zip_with(tmp_path, source, payload, key, payload_first=False):
  """`{key: <the genuine file's object>, 'extra': payload}` in the genuine file's zip."""
  with zipfile.ZipFile(source) as archive:
    root = archive.namelist()[0].split('/')[0]
    records = {n.split('/data/')[1]: archive.read(n) for n in archive.namelist()
               if '/data/' in n}
    genuine = body_of(archive.read(f'{root}/data.pkl'))
  items = {'extra': payload, key: genuine} if payload_first else {key: genuine, 'extra': payload}
  return write_zip(tmp_path / 'nested.pth', program(dict_of(items)), records, root=root)


@pytest.mark.parametrize('source,key', [(GENUINE_STATE_DICT, 'state_dict'),
                                        (GENUINE_MODULE, 'model')])
@pytest.mark.parametrize('payload_first', [False, True])
def test_payload_beside_a_genuine_zip_checkpoint(source, key, payload_first, tmp_path,
                                                 count_views):
  marker = tmp_path / 'ran'
  path = genuine_zip_with(tmp_path, source, payloads(marker)['builtins.exec'], key,
                          payload_first)
  with pytest.raises(pth_reader.UnsafeCheckpointError, match='the global builtins.exec'):
    torch_import.read_state_dict(str(path))
  assert not touched(marker) and not count_views  # refused before any tensor was built


def test_payload_beside_a_genuine_legacy_checkpoint(torch_legacy_files, tmp_path, count_views):
  marker = tmp_path / 'ran'
  header, main, tail = legacy_split(torch_legacy_files['state_dict'].read_bytes())
  evil = program(dict_of({'state_dict': body_of(main),
                          'extra': payloads(marker)['posix.system']}))
  path = tmp_path / 'nested_legacy.pth'
  path.write_bytes(header + evil + tail)
  with pytest.raises(pth_reader.UnsafeCheckpointError, match='the global posix.system'):
    torch_import.read_state_dict(str(path))
  assert not touched(marker) and not count_views


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_payload_inside_a_pickled_module(fmt, tmp_path):
  marker = tmp_path / 'ran'
  module = (g('models.resnet', 'ResNet') + b')\x81' +
            dict_of({'_modules': v({}), 'training': payloads(marker)['subprocess.Popen']}) +
            b'b')
  path = write(tmp_path / 'module', fmt, module)
  with pytest.raises(pth_reader.UnsafeCheckpointError, match='the global subprocess.Popen'):
    torch_import.read_state_dict(str(path))
  assert not touched(marker)


@pytest.fixture(name='evil_models')
def fixture_evil_models(tmp_path, monkeypatch):
  """An importable module `evil_models` that would create a marker when imported."""
  marker = tmp_path / 'imported'
  (tmp_path / 'evil_models.py').write_text(
      f'open({str(marker)!r}, "w").close()\nclass Net:\n  pass\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  return marker


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_model_classes_are_never_imported_nor_called(fmt, tmp_path, evil_models):
  # A stand-in called with a command (REDUCE) builds an inert object and runs nothing.
  path = write(tmp_path / 'standin', fmt,
               dict_of({'model': call(g('evil_models', 'Net'), v('touch /tmp/x'))}))
  with pytest.raises(pth_reader.MalformedCheckpointError, match='holds no state_dict'):
    torch_import.read_state_dict(str(path))
  assert not touched(evil_models) and 'evil_models' not in sys.modules


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('case,refused', [
    ('storage type outside the allowlist', 'torch.QInt8Storage'),
    ('numpy internals', 'numpy.core.multiarray._reconstruct'),
    ('a capitalised name in the standard library', 'argparse.Namespace'),
    ('a tensor subclass wrapper', 'torch._tensor._rebuild_from_type_v2'),
    ('a torch class outside torch.nn', 'torch.serialization.StorageType'),
    ('a function of the user\'s script', '__main__.train'),
    ('a private top-level module', '_posixsubprocess.fork_exec'),
    *[(f'standard library: {name}', name) for name in (
        'functools.partial', 'operator.attrgetter', 'types.FunctionType', '_codecs.encode',
        'codecs.decode', 'shutil.rmtree', 'runpy._run_code', 'ctypes.CDLL', 'socket.socket',
        'sys.modules', 'pickle.Unpickler', 'builtins.object', 'builtins.dict')],
])
def test_other_globals_are_refused(case, refused, fmt, tmp_path):
  del case
  module, name = refused.rsplit('.', 1)
  path = write(tmp_path / 'other', fmt, call(g(module, name)))
  with pytest.raises(pth_reader.UnsafeCheckpointError, match=f'the global {refused} named'):
    torch_import.read_state_dict(str(path))


@pytest.mark.parametrize('opcode,body', [
    ('EXT1', b'\x82\x01'),
    ('INST', b'(ipth_evil\nRunner\n'),
    ('OBJ', b'(' + g('evil_models', 'Net') + b'o'),
    ('NEWOBJ_EX', g('evil_models', 'Net') + b')}\x92'),
])
def test_opcodes_that_reach_code_other_ways_are_refused(opcode, body, tmp_path):
  path = write(tmp_path / 'op', 'zip', body)
  with pytest.raises(pth_reader.UnsafeCheckpointError, match=f'the pickle opcode {opcode}'):
    torch_import.read_state_dict(str(path))


def test_inst_names_its_global(tmp_path):
  path = write(tmp_path / 'inst', 'zip', b'(' + v('touch x') + b'ios\nsystem\n')
  with pytest.raises(pth_reader.UnsafeCheckpointError, match='the global os.system named'):
    torch_import.read_state_dict(str(path))


def test_cli_subprocess_prints_one_line(tmp_path):
  marker = tmp_path / 'ran'
  cases = {
      'zip': (write(tmp_path / 'evil', 'zip', payloads(marker)['builtins.exec']),
              'the global builtins.exec named in its pickle'),
      'legacy': (write(tmp_path / 'evil', 'legacy', payloads(marker)['os.system']),
                 'the global os.system named in its pickle'),
      'damaged': (write(tmp_path / 'bad', 'zip', tensor('0', 4, (10,), (1,)),
                        {'0': np.zeros(4, np.float32)}), 'reaches element 9'),
  }
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  for path, expected in cases.values():
    done = subprocess.run(
        [sys.executable, '-m', 'oracle_jax.torch_import', str(path), str(tmp_path / 'out'),
         '--model=resnet8', '--num_classes=10'], capture_output=True, text=True, env=env,
        timeout=300, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and 'Traceback' not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], lines
  assert not touched(marker)


def test_main_py_refuses_a_hostile_teacher(tmp_path, digits_data_dir):
  marker = tmp_path / 'ran'
  path = write(tmp_path / 'teacher', 'zip', payloads(marker)['builtins.exec'])
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'main.py'),
       '--config=' + os.path.join(REPO, 'configs', 'default.py'),
       '--config.method=kd', '--config.teacher.model=resnet8', '--config.student.model=resnet8',
       f'--config.teacher.checkpoint={path}', f'--config.data_dir={digits_data_dir}',
       f'--workdir={tmp_path / "run"}'],
      capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': REPO}, timeout=300,
      check=False)
  errors = [line for line in done.stderr.splitlines() if line.startswith('error: ')]
  assert done.returncode != 0 and 'Traceback' not in done.stderr, done.stderr
  assert len(errors) == 1 and 'the global builtins.exec named in its pickle' in errors[0]
  assert not touched(marker) and not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------- malformed files

FOUR = {'0': np.arange(4, dtype=np.float32)}


def one_tensor(*args, **kwargs):
  return dict_of({'w': tensor(*args, **kwargs)})


MALFORMED = {
    'view past its storage': (one_tensor('0', 4, (10,), (1,)), FOUR,
                              r'a tensor view \(size \(10,\), stride \(1,\), offset 0\) reaches '
                              r'element 9 of a storage of 4 elements'),
    'offset past its storage': (one_tensor('0', 4, (2,), (1,), offset=3), FOUR,
                                'reaches element 4 of a storage of 4 elements'),
    'huge offset': (one_tensor('0', 4, (1,), (1,), offset=2**70), FOUR,
                    r'a tensor storage offset is not an int in \[0, 2\*\*48\)'),
    'offset just inside the bound': (one_tensor('0', 4, (1,), (1,), offset=2**48 - 1), FOUR,
                                     'reaches element 281474976710655 of a storage of 4'),
    'huge stride on a size-1 dimension': (one_tensor('0', 4, (1, 4), (2**70, 1)), FOUR,
                                          'a tensor stride is not a tuple of at most 64 ints'),
    '65 dimensions': (one_tensor('0', 4, (1,) * 65, (1,) * 65), FOUR,
                      'a tensor size is not a tuple of at most 64 ints'),
    'empty tensor of huge dimensions': (one_tensor('0', 4, (0, 2**47, 2**47), (1, 1, 1)), FOUR,
                                        r'an empty tensor has size \(0, 140737488355328'),
    'negative size': (one_tensor('0', 4, (-1,), (1,)), FOUR,
                      r'a tensor size is not a tuple of at most 64 ints in \[0, 2\*\*48\)'),
    'negative stride': (one_tensor('0', 4, (2,), (-1,), offset=3), FOUR,
                        'a tensor stride is not a tuple of at most 64 ints'),
    'float size': (one_tensor('0', 4, (2.0,), (1,)), FOUR, 'a tensor size is not a tuple'),
    'stride 0 (a 4-element storage as 8 GiB)': (
        one_tensor('0', 4, (2**31,), (0,)), FOUR,
        r'a tensor view \(size \(2147483648,\), stride \(0,\)\) reads storage elements more '
        'than once'),
    'overlapping strides': (one_tensor('0', 4, (2, 2), (1, 1)), FOUR, 'more than once'),
    'sizes and strides of different lengths': (one_tensor('0', 4, (2, 2), (1,)), FOUR,
                                               'a tensor has 2 sizes but 1 strides'),
    'storage record shorter than declared': (
        one_tensor('0', 8, (8,), (1,)), FOUR,
        'the record archive/data/0 holds 16 bytes but its pickle declares 32'),
    'missing storage record': (one_tensor('0', 4, (4,), (1,)), {},
                               'the record archive/data/0 is missing'),
    'persistent id of the wrong shape': (
        dict_of({'w': b'(' + v('storage') + g('torch', 'FloatStorage') + v('0') + b'tQ'}), FOUR,
        r'a persistent id is not a storage reference \(found a 3-tuple\)'),
    'persistent id that is not a tuple': (dict_of({'w': v('0') + b'Q'}), FOUR,
                                          r'not a storage reference \(found a str\)'),
    'storage reference with a non-string key': (
        dict_of({'w': b'(' + v('storage') + g('torch', 'FloatStorage') + v(0) + v('cpu') +
                      v(4) + b'tQ'}), FOUR, 'the storage reference with key <int> is malformed'),
    'storage key nested 100000 deep': (
        dict_of({'w': b'(' + v('storage') + g('torch', 'FloatStorage') + v(0) +
                      b'\x85' * 100_000 + v('cpu') + v(4) + b'tQ'}), FOUR,
        'the storage reference with key <tuple> is malformed'),
    'a 5000-digit state_dict key': (b'}' + v(10**5000) + v(1.0) + b's', {},
                                    'its pickle holds an integer of 16610 bits'),
    'an int key beyond the hash modulus': (b'}' + v(2**61 - 1) + v(1.0) + b's', {},
                                           'a dict key or set member is an integer beyond'),
    'a float as a set member': (call(g('builtins', 'set'), v([1.5])), {},
                                'a dict key or set member is a float, not a str or int'),
    'an int state_dict key': (b'}' + v(7) + v(1.0) + b's', {},
                              r'holds no state_dict or nn.Module \(found \[\'int\'\]\)'),
    'unknown rebuild function': (
        dict_of({'w': call(g('torch._utils', '_rebuild_qtensor'), v(1))}), FOUR,
        r'a kind of tensor this reader does not read \(torch._utils._rebuild_qtensor\)'),
    'untyped storage of a partial element': (
        dict_of({'w': call(g('torch._utils', '_rebuild_tensor_v3'),
                           b'(' + v('storage') + g('torch.storage', 'UntypedStorage') + v('0') +
                           v('cpu') + v(6) + b'tQ', v(0), v((1,)), v((1,)), v(False),
                           call(g('collections', 'OrderedDict')), g('torch', 'float32'))}),
        {'0': b'\0' * 6}, 'a storage of 6 bytes does not hold whole float32 elements'),
    'negation bit': (one_tensor('0', 4, (4,), (1,), extra=(v({'neg': True}),)), FOUR,
                     'lazy negation or conjugation bit'),
    'state set on a tensor': (dict_of({'w': tensor('0', 4, (4,), (1,)) + v({'x': 1}) + b'b'}),
                              FOUR, 'sets the state of a ndarray'),
    'state set on a rebuild function': (
        g('torch._utils', '_rebuild_tensor_v2') + v((None, {'__defaults__': (1,)})) + b'b',
        {}, 'sets the state of a function'),
    'call of a string': (call(v('print')), {}, 'calls a str, which is not an allowed function'),
    'NEWOBJ of OrderedDict': (g('collections', 'OrderedDict') + b')\x81', {},
                              'NEWOBJ of something that is not a model class'),
    'tuple as a dict key': (b'}(' + v((1, 2)) + v(3) + b'u', {},
                            'a dict key or set member is a tuple, not a str or int'),
    'pickle cut short': (dict_of({'w': v('x' * 10)})[:-6], {}, 'its pickle is malformed'),
    'stack underflow': (b'tR', {}, 'its pickle is malformed at byte 2'),
    'no state_dict': (v([1, 2]), {}, r'holds no state_dict or nn.Module \(found list\)'),
    'module entry that is not a tensor': (
        g('models.resnet', 'ResNet') + b')\x81' +
        dict_of({'_modules': v({}), '_parameters': v({'w': 'text'})}) + b'b', {},
        "the state_dict entry 'w' is a str, not a tensor"),
    'module entry with an int name': (
        g('models.resnet', 'ResNet') + b')\x81' +
        dict_of({'_modules': v({}), '_parameters': b'}' + v(5) + v(1) + b's'}) + b'b',
        {}, "a pickled module's _parameters is not a dict of names"),
    'modules in a cycle': (
        g('models.resnet', 'ResNet') + b')\x81' + put(7) +
        dict_of({'_modules': dict_of({'self': get(7)})}) + b'b', {},
        r"its pickled module contains itself \(at 'self.'\)"),
    'modules shared in a lattice (2**40 paths)': (
        b''.join(g('models.resnet', 'Block') + b')\x81' +
                 dict_of({'_modules': dict_of({'a': get(i + 1), 'b': get(i + 1)})
                                      if i < 40 else v({})}) + b'b' + put(i) + (b'0' if i else b'')
                 for i in range(40, -1, -1)), {},
        'it costs more than its size warrants'),
}


@pytest.mark.parametrize('case', list(MALFORMED))
def test_malformed_zip(case, tmp_path):
  body, storages, message = MALFORMED[case]
  path = write(tmp_path / 'bad', 'zip', body, storages)
  with pytest.raises(pth_reader.MalformedCheckpointError, match=message) as error:
    torch_import.read_state_dict(str(path))
  assert str(path) in str(error.value) and '\n' not in str(error.value)


def test_malformed_zip_archives(tmp_path):
  data = GENUINE_STATE_DICT.read_bytes()
  cases = {'truncated.pth': (data[:len(data) // 2], 'it is a truncated or damaged zip archive')}
  with zipfile.ZipFile(GENUINE_STATE_DICT) as archive:
    offset = archive.getinfo('model/data/7').header_offset
  name_length, extra_length = struct.unpack('<HH', data[offset + 26:offset + 30])
  flipped = bytearray(data)
  flipped[offset + 30 + name_length + extra_length + 5] ^= 0xFF  # inside the record's data
  cases['bad_crc.pth'] = (bytes(flipped), r'the record model/data/7 is damaged \(bad CRC-32\)')
  for name, (content, message) in cases.items():
    (tmp_path / name).write_bytes(content)
    with pytest.raises(pth_reader.MalformedCheckpointError, match=message):
      torch_import.read_state_dict(str(tmp_path / name))
  plain = write_zip(tmp_path / 'plain.pth', program(one_tensor('0', 4, (4,), (1,))), FOUR)
  for name, (field, value, message) in {
      'encrypted.pth': (8, b'\x01\x00', 'is compressed or encrypted'),
      'outside.pth': (42, b'\xff\xff\xff\x7f', 'the record archive/data/0 lies outside'),
      # Claimed sizes that disagree, or agree on more bytes than lie before the next record.
      'lying_size.pth': (20, b'\x00\x10\x00\x00', 'claims 4096 stored bytes for 16 bytes'),
      'both_sizes.pth': (20, b'\x00\x10\x00\x00\x00\x10\x00\x00', 'overlaps'),
      # Pointed at another record's local header (two names for one byte range).
      'relabelled.pth': (42, b'\x00\x00\x00\x00', 'the record archive/data/0 overlaps another'),
  }.items():
    edited = bytearray(plain.read_bytes())
    entry = edited.rindex(b'PK\x01\x02', 0, edited.rindex(b'archive/data/0'))
    edited[entry + field:entry + field + len(value)] = value  # its central directory entry
    (tmp_path / name).write_bytes(bytes(edited))
    with pytest.raises(pth_reader.MalformedCheckpointError, match=message):
      torch_import.read_state_dict(str(tmp_path / name))
  renamed = bytearray(plain.read_bytes())  # the central directory names another record
  at = renamed.rindex(b'archive/data/0')
  renamed[at:at + 14] = b'archive/data/1'
  (tmp_path / 'renamed.pth').write_bytes(bytes(renamed))
  with pytest.raises(pth_reader.MalformedCheckpointError,
                     match='the record archive/data/1 has no local header naming it'):
    torch_import.read_state_dict(str(tmp_path / 'renamed.pth'))
  with zipfile.ZipFile(tmp_path / 'twice.pth', 'w') as archive, warnings.catch_warnings():
    warnings.simplefilter('ignore')  # zipfile warns of the duplicate name: wanted here
    for name, content in (('archive/data.pkl', program(one_tensor('0', 4, (4,), (1,)))),
                          ('archive/data/0', FOUR['0'].tobytes()),
                          ('archive/data/0', np.ones(4, np.float32).tobytes())):
      archive.writestr(name, content)
  with pytest.raises(pth_reader.MalformedCheckpointError, match='two of its records have the'):
    torch_import.read_state_dict(str(tmp_path / 'twice.pth'))
  write_zip(tmp_path / 'deflated.pth', program(one_tensor('0', 4, (4,), (1,))), FOUR,
            compression=zipfile.ZIP_DEFLATED)
  with pytest.raises(pth_reader.MalformedCheckpointError, match='is compressed or encrypted'):
    torch_import.read_state_dict(str(tmp_path / 'deflated.pth'))
  write_zip(tmp_path / 'order.pth', program(one_tensor('0', 4, (4,), (1,))), FOUR,
            byteorder=b'middle')
  with pytest.raises(pth_reader.MalformedCheckpointError, match='its byteorder record is middle'):
    torch_import.read_state_dict(str(tmp_path / 'order.pth'))


def test_malformed_legacy(tmp_path):
  four = np.arange(4, dtype=np.float32)
  good = program(dict_of({'w': tensor('0', 4, (4,), (1,), legacy=True)}))
  header = legacy_header()
  tail = pickle.dumps(['0'], protocol=2) + (4).to_bytes(8, 'little') + four.tobytes()
  cases = {
      'cut short': (header + good + tail[:-3], "it is truncated: storage '0' is cut short"),
      'element count': (header + good + tail.replace((4).to_bytes(8, 'little'),
                                                     (3).to_bytes(8, 'little')),
                        "storage '0' holds 3 elements but its pickle declares 4"),
      'declared beyond the file': (
          header + program(dict_of({'w': tensor('0', 2**40, (4,), (1,), legacy=True)})) + tail,
          'declares more storage bytes than the file holds'),
      'unused key': (header + good + pickle.dumps(['0', '9'], protocol=2) + tail[
          len(pickle.dumps(['0'], protocol=2)):], "lists storage '9' that its pickle does not use"),
      'no data': (header + good + pickle.dumps([], protocol=2),
                  "the data of storage '0' is missing"),
      'version': (header.replace(pickle.dumps(1001, protocol=2), pickle.dumps(999, protocol=2))
                  + good + tail, 'its legacy format version is 999, not 1001'),
      'a 5000-digit version': (
          header.replace(pickle.dumps(1001, protocol=2), pickle.dumps(10**5000, protocol=2)) +
          good + tail, 'its pickle holds an integer of 16610 bits'),
      'a text version': (
          header.replace(pickle.dumps(1001, protocol=2), pickle.dumps('1001', protocol=2)) +
          good + tail, 'its legacy format version is a str, not 1001'),
      'plain pickle': (pickle.dumps({'w': [1.0]}, protocol=2),
                       'it is a pickle but not one written by torch.save'),
      'zip persistent id': (header + program(one_tensor('0', 4, (4,), (1,))) + tail,
                            r'not a storage reference \(found a 5-tuple\)'),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / f'{name}.pth'
    path.write_bytes(content)
    with pytest.raises(pth_reader.MalformedCheckpointError, match=message):
      torch_import.read_state_dict(str(path))


def test_missing_file_and_not_a_checkpoint(tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match='does not exist'):
    torch_import.read_state_dict(str(tmp_path / 'absent.pth'))
  with pytest.raises(errors.CheckpointNotFoundError, match='or is not a file'):
    torch_import.read_state_dict(str(tmp_path))
  (tmp_path / 'text.pth').write_text('hello')
  with pytest.raises(pth_reader.MalformedCheckpointError, match='is not a PyTorch checkpoint'):
    torch_import.read_state_dict(str(tmp_path / 'text.pth'))


# ----------------------------------------------------------------------------- unfit weights

@pytest.fixture(scope='module', name='resnet8')
def fixture_resnet8():
  """resnet8 (10 classes) variables with random values, and their PyTorch state_dict."""
  model = models.create('resnet8', 10)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  return variables, torch_import.to_state_dict(variables)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('change,message', [
    (lambda sd: sd.update({'fc.weight': np.float32(1.0).reshape(())}),
     r"Shape mismatch for 'fc.weight' in a resnet8 checkpoint: expected \(10, 64\), found \(\)"),
    (lambda sd: sd.update({'conv1.weight': sd['conv1.weight'].astype(np.int64)}),
     "'conv1.weight' holds int64 values, but weights and BatchNorm statistics are floating"),
    (lambda sd: sd['bn1.running_var'].__setitem__(0, np.nan),
     "'bn1.running_var' holds NaN or infinite values"),
    (lambda sd: sd['fc.bias'].__setitem__(3, np.inf), "'fc.bias' holds NaN or infinite"),
])
def test_weights_that_do_not_fit_are_named(change, message, resnet8, tmp_path):
  state_dict = {k: a.copy() for k, a in resnet8[1].items()}
  change(state_dict)
  body, storages = state_dict_body(state_dict)
  path = write_zip(tmp_path / 'unfit.pth', program(body), storages)
  with pytest.raises(torch_import.CheckpointMismatchError, match=message) as error:
    torch_import.load(str(path), 'resnet8', 10)
  assert str(error.value).startswith(f'{path}: ')


# ----------------------------------------------------------------------------- genuine files

@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_hand_written_state_dict_loads_exactly(fmt, resnet8, tmp_path):
  variables, state_dict = resnet8
  body, storages = state_dict_body(state_dict, legacy=fmt == 'legacy')
  path = write(tmp_path / 'genuine', fmt, body, storages)
  assert_trees_equal(torch_import.load(str(path), 'resnet8', 10), variables)


def torch_module_from(state_dict, root):
  """A whole torch module tree with `state_dict`'s names (generic nn.Modules inside)."""
  import torch  # pylint: disable=g-import-not-at-top
  for name, array in state_dict.items():
    *path, leaf = name.split('.')
    module = root
    for part in path:
      if part not in module._modules:  # pylint: disable=protected-access
        module.add_module(part, torch.nn.Module())
      module = module._modules[part]  # pylint: disable=protected-access
    value = torch.from_numpy(array.copy())
    if leaf in ('weight', 'bias'):
      module.register_parameter(leaf, torch.nn.Parameter(value))
    else:
      module.register_buffer(leaf, value)
  root.register_buffer('scratch', torch.ones(3), persistent=False)  # not in a state_dict
  return root


def torch_save_module(path, state_dict, package, fmt):
  """torch.save of a whole module of class `<package>.Net`, a package that exists only
  while torch.save looks the class up (as the user's model code would)."""
  import torch  # pylint: disable=g-import-not-at-top
  fake = types.ModuleType(package)
  fake.Net = type('Net', (torch.nn.Module,), {'__module__': package})
  sys.modules[package] = fake
  try:
    torch.save(torch_module_from(state_dict, fake.Net()), path,
               _use_new_zipfile_serialization=fmt == 'zip')
  finally:
    del sys.modules[package]
  return path


@pytest.fixture(scope='module', name='torch_legacy_files')
def fixture_torch_legacy_files(resnet8, tmp_path_factory):
  """torch.save'd files of resnet8: state_dict and whole module, zip and legacy."""
  import torch  # pylint: disable=g-import-not-at-top
  tensors = {k: torch.from_numpy(a.copy()) for k, a in resnet8[1].items()}
  directory = tmp_path_factory.mktemp('torch')
  files = {}
  for fmt in ('zip', 'legacy'):
    suffix = '_zip' if fmt == 'zip' else ''
    files[f'state_dict{suffix}'] = directory / f'state_dict{suffix}.pth'
    torch.save(tensors, files[f'state_dict{suffix}'],
               _use_new_zipfile_serialization=fmt == 'zip')
    files[f'module{suffix}'] = torch_save_module(directory / f'module{suffix}.pth',
                                                 resnet8[1], 'my_models', fmt)
  return files


@pytest.mark.parametrize('name', ['state_dict', 'state_dict_zip', 'module', 'module_zip'])
def test_torch_saved_files_load_exactly(name, resnet8, torch_legacy_files):
  variables, state_dict = resnet8
  read = torch_import.read_state_dict(str(torch_legacy_files[name]))
  read = {k: a for k, a in read.items() if not k.endswith('num_batches_tracked')}
  assert set(read) == set(state_dict)
  for key, array in state_dict.items():
    np.testing.assert_array_equal(read[key], array, err_msg=key)
  assert_trees_equal(torch_import.load(str(torch_legacy_files[name]), 'resnet8', 10), variables)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('protocol', [2, 4])
def test_torch_views_dtypes_and_shared_storages(fmt, protocol, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  base = torch.arange(24, dtype=torch.float32)
  tensors = {
      'base': base, 'slice': base[5:9], 'transposed': base.view(4, 6).t(),
      'strided': base.view(4, 6)[1:, ::2], 'channels_last': torch.arange(
          2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5).to(
              memory_format=torch.channels_last),
      'half': torch.tensor([1.5, -2.0], dtype=torch.float16),
      'bfloat16': torch.tensor([1.5, -2.0, 3.0], dtype=torch.bfloat16),
      'long': torch.tensor([1, -(2**40)]), 'bool': torch.tensor([True, False]),
      'uint16': torch.tensor([1, 65535], dtype=torch.uint16), 'empty': torch.zeros(0, 3),
      'scalar': torch.tensor(7.0),
  }
  path = tmp_path / 'views.pth'
  torch.save(tensors, path, pickle_protocol=protocol,
             _use_new_zipfile_serialization=fmt == 'zip')
  read = torch_import.read_state_dict(str(path))
  for key, t in tensors.items():
    expected = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    assert read[key].shape == tuple(t.shape), key
    np.testing.assert_array_equal(read[key].astype(expected.dtype), expected, err_msg=key)
  assert read['bfloat16'].dtype.name == 'bfloat16' and read['uint16'].dtype == np.uint16
  for key in ('slice', 'transposed', 'strided'):  # one storage, read once
    assert np.shares_memory(read[key], read['base'])


def test_a_storage_shared_by_many_tensors_is_read_once(tmp_path, monkeypatch):
  values = np.arange(4096, dtype=np.float32)
  items = {f'full{i}': tensor('0', 4096, (4096,), (1,)) for i in range(1000)}
  items.update({f'part{i}': tensor('0', 4096, (1024,), (1,), offset=1024 * i) for i in range(4)})
  path = write_zip(tmp_path / 'shared.pth', program(dict_of(items)), {'0': values})
  reads = []
  read_record = pth_reader._ZipRecords.read  # pylint: disable=protected-access
  monkeypatch.setattr(pth_reader._ZipRecords, 'read',  # pylint: disable=protected-access
                      lambda self, info, *a: reads.append(info.filename) or
                      read_record(self, info, *a))
  state = torch_import.read_state_dict(str(path))
  assert reads.count('archive/data/0') == 1
  assert all(np.shares_memory(a, state['full0']) for a in state.values())
  np.testing.assert_array_equal(state['full999'], values)
  np.testing.assert_array_equal(np.concatenate([state[f'part{i}'] for i in range(4)]), values)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_python2_era_containers(fmt, tmp_path):
  """Python 2 pickled OrderedDict([[key, value]]) and `__builtin__.set`; torch.Size too."""
  legacy = fmt == 'legacy'
  state_dict = call(g('collections', 'OrderedDict'),
                    b'((' + v('w') + tensor('0', 4, (2, 2), (2, 1), legacy=legacy) + b'll')
  body = dict_of({'state_dict': state_dict, 'shape': call(g('torch', 'Size'), v((2, 2))),
                  'names': call(g('__builtin__', 'set'), v(['a', 'b']))})
  path = write(tmp_path / 'py2', fmt, body, FOUR)
  assert pth_reader.read(path)['shape'] == (2, 2) and pth_reader.read(path)['names'] == {'a', 'b'}
  np.testing.assert_array_equal(torch_import.read_state_dict(str(path))['w'],
                                FOUR['0'].reshape(2, 2))


def test_big_endian_storages(tmp_path):
  values = np.array([1.5, -2.25, 3e-8, 7.0], np.float32)
  path = write_zip(tmp_path / 'big.pth', program(one_tensor('0', 4, (2, 2), (1, 2))),
                   {'0': values.astype('>f4')}, byteorder=b'big')
  read = torch_import.read_state_dict(str(path))['w']
  assert read.dtype == np.float32 and read.dtype.isnative
  np.testing.assert_array_equal(read, values.reshape(2, 2, order='F'))


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_whole_module_of_an_importable_hostile_package_is_never_imported(
    fmt, resnet8, tmp_path, evil_models):
  """Model classes named by a genuine pickled module become stand-ins, never imports."""
  path = torch_save_module(tmp_path / 'net.pth', resnet8[1], 'evil_models', fmt)
  assert_trees_equal(torch_import.load(str(path), 'resnet8', 10), resnet8[0])
  assert not touched(evil_models) and 'evil_models' not in sys.modules
