""".safetensors in: genuine files read as the library reads them, hostile headers refused
in one line, and the file works wherever a .pth does (torch_import, teachers, the zoo)."""
import dataclasses
import hashlib
import json
import struct

import hypothesis
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from conftest import REFERENCE_DIR
from hypothesis import strategies as st

from oracle_jax import teachers, zoo
from oracle_jax.interop import safetensors_reader, torch_import

PTH = REFERENCE_DIR / 'torch' / 'cifar100_resnet20_state_dict.pth'
TENSORS = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3),
           'a.num_batches_tracked': np.asarray(5, np.int64),
           'b.half': np.ones((2, 2), np.float16), 'empty': np.zeros((0, 4), np.float32)}


def assert_same(ours, theirs):
  assert sorted(ours) == sorted(theirs)
  for k, v in theirs.items():
    assert (ours[k].dtype, ours[k].shape, ours[k].tobytes()) == (v.dtype, v.shape, v.tobytes())


def genuine_bytes():
  return safetensors.numpy.save(TENSORS, metadata={'format': 'pt'})


def split(blob):
  size = struct.unpack('<Q', blob[:8])[0]
  return json.loads(blob[8:8 + size]), blob[8 + size:]


def join(header, region, raw_header=None):
  raw = raw_header if raw_header is not None else json.dumps(header).encode()
  return struct.pack('<Q', len(raw)) + raw + region


def test_reads_what_the_library_writes_and_reads(tmp_path):
  path = tmp_path / 'w.safetensors'
  path.write_bytes(genuine_bytes())
  tensors, metadata = safetensors_reader.read(path)
  assert metadata == {'format': 'pt'}
  assert_same(tensors, safetensors.numpy.load_file(str(path)))
  assert_same(tensors, TENSORS)


def test_bfloat16(tmp_path):
  """BF16 (which the library's numpy API cannot return) read as ml_dtypes.bfloat16."""
  values = np.asarray([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
  header = {'w': {'dtype': 'BF16', 'shape': [3], 'data_offsets': [0, 6]}}
  path = tmp_path / 'bf16.safetensors'
  path.write_bytes(join(header, values.tobytes()))
  np.testing.assert_array_equal(safetensors_reader.read_state_dict(path)['w'], values)


def _edit(change):
  """A genuine file with `change(header, region)` applied: returns the new bytes."""
  def make():
    header, region = split(genuine_bytes())
    return change(header, region)
  return make


def _offsets(name, begin, end):
  def change(header, region):
    header[name]['data_offsets'] = [begin, end]
    return join(header, region)
  return change


def _field(name, key, value):
  def change(header, region):
    header[name][key] = value
    return join(header, region)
  return change


HOSTILE = {
    'overlapping offsets': (_edit(_offsets('b.half', 0, 8)), 'starts at byte 0 .*overlapping'),
    'offsets past the data': (_edit(_offsets('a.weight', 32, 10**6)), r'data_offsets must be'),
    'a gap': (_edit(lambda h, r: join(h, r + b'\0' * 8)), r'cover \d+ of the data region'),
    'unknown dtype': (_edit(_field('a.weight', 'dtype', 'F128')), "dtype 'F128', not one of"),
    'dtype not a string': (_edit(_field('a.weight', 'dtype', ['F32'])), 'not one of'),
    'negative dim': (_edit(_field('a.weight', 'shape', [-2, -3])), 'non-negative integers'),
    'float dim': (_edit(_field('a.weight', 'shape', [2.0, 3])), 'non-negative integers'),
    'bool dim': (_edit(_field('a.weight', 'shape', [True, 6])), 'non-negative integers'),
    'too many dims': (_edit(_field('a.weight', 'shape', [1] * 33)), 'at most 32'),
    'shape larger than its bytes': (_edit(_field('a.weight', 'shape', [10**30, 10**30])),
                                    'does not fill its 24 bytes'),
    'extra field': (_edit(_field('a.weight', 'code', 'x')), 'needs exactly the fields'),
    'metadata not strings': (_edit(lambda h, r: join({**h, '__metadata__': {'a': 1}}, r)),
                             '__metadata__ is not a map of strings'),
    'header longer than the file': (
        lambda: struct.pack('<Q', 10_000) + b'{}', 'exceeds the file'),
    'huge header length': (lambda: struct.pack('<Q', 2**63) + b'{}' * 8, 'exceeds the file'),
    'not JSON': (lambda: join(None, b'', raw_header=b'{"a": [1, 2'), 'not JSON'),
    'not UTF-8': (lambda: join(None, b'', raw_header=b'{"\xff": 1}'), 'not JSON'),
    'deep nesting': (lambda: join(None, b'', raw_header=b'{"a":' + b'[' * 100_000),
                     'not JSON'),
    'duplicate names': (lambda: join(None, b'\0' * 4, raw_header=(
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')), 'names a key twice'),
    'not an object': (lambda: join(None, b'', raw_header=b'[1]'), 'does not start with'),
    'too short': (lambda: b'\x02\x00', 'shorter than the 8-byte'),
    'name with a newline': (_edit(lambda h, r: join(
        {**h, 'x\ny': {'dtype': 'X', 'shape': [], 'data_offsets': [0, 0]}}, r)),
                            r"tensor 'x\\ny' has dtype"),
}


@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_hostile_headers_are_refused_in_one_line(case, tmp_path):
  make, message = HOSTILE[case]
  path = tmp_path / 'bad.safetensors'
  path.write_bytes(make())
  with pytest.raises(torch_import.MalformedCheckpointError, match=message) as error:
    safetensors_reader.read(path)
  text = str(error.value)
  assert '\n' not in text and text.startswith(f'{path} is not a valid safetensors file: ')
  assert len(text) < 400


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    safetensors_reader.read(tmp_path / 'absent.safetensors')


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
@hypothesis.given(st.data())
def test_any_damage_is_refused_or_read_consistently(data):
  """Bytes of a genuine file overwritten at random: refused with the reader's error, or
  read into arrays that fit the file (never another exception)."""
  blob = bytearray(genuine_bytes())
  for _ in range(data.draw(st.integers(1, 4))):
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] = data.draw(st.integers(0, 255))
  if data.draw(st.booleans()):
    blob = blob[:data.draw(st.integers(0, len(blob)))]
  try:
    tensors, _ = safetensors_reader.parse(bytes(blob))
  except safetensors_reader._Bad:  # pylint: disable=protected-access
    return
  assert sum(t.nbytes for t in tensors.values()) <= len(blob)


def test_works_wherever_a_pth_does(tmp_path, capsys, monkeypatch):
  """The torch_import command, a teacher checkpoint and a zoo source."""
  path = tmp_path / 'r20.safetensors'
  safetensors.numpy.save_file(torch_import.read_state_dict(str(PTH)), str(path))
  expected = torch_import.load(str(PTH), 'resnet20', 100)
  torch_import.main([str(path), str(tmp_path / 'orbax'), '--model=resnet20',
                     '--num_classes=100'])
  assert 'Wrote resnet20 (100 classes)' in capsys.readouterr().out
  for variables in (teachers.read(str(tmp_path / 'orbax'), 'resnet20', 100),
                    teachers.read(str(path), 'resnet20', 100)):
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
  name = 'official/cifar100/resnet20'
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  monkeypatch.setitem(zoo.REGISTRY, name, dataclasses.replace(
      zoo.REGISTRY[name], url=path.as_uri(), sha256=digest, max_bytes=path.stat().st_size))
  teacher_dir = zoo.fetch(name, tmp_path / 'zoo')
  assert (tmp_path / 'zoo' / f'{name}.safetensors').read_bytes() == path.read_bytes()
  jax.tree.map(np.testing.assert_array_equal,
               teachers.read(str(teacher_dir), 'resnet20', 100), expected)


def test_command_refuses_a_hostile_file_in_one_line(tmp_path):
  path = tmp_path / 'bad.safetensors'
  path.write_bytes(HOSTILE['overlapping offsets'][0]())
  with pytest.raises(SystemExit, match=r'^error: .*bad.safetensors is not a valid safetensors '
                                       'file: tensor .*overlapping'):
    torch_import.main([str(path), str(tmp_path / 'out'), '--model=resnet20',
                       '--num_classes=100'])
  assert not (tmp_path / 'out').exists()
