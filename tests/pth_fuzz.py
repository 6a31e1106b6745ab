"""Fuzzing the .pth reader: every input reads, or raises the reader's UserError, within time
and memory linear in its size.

    python tests/pth_fuzz.py --examples=20000 --seed=1    # a release check (~20 minutes)

Inputs (hypothesis): the seed checkpoints of tests/data/pth_fuzz/ mutated (bit flips and
truncations of the file; bit flips, cuts, repeats and spliced opcodes in its pickle,
re-wrapped so the archive stays valid; zip records duplicated, relabelled, dropped or
given lying sizes) and pickles generated from the opcode grammar, in both containers.
The run holds RLIMIT_AS (--memory_mib); each example must finish within 2 s + 20 µs per
byte, with a tracemalloc peak within the reader's contract (`pth_reader.Budget`).
`tests/test_pth_fuzz.py` runs a CI-sized run (fixed seed, well under 60 s).
"""
import argparse
import collections
import io
import os
import pathlib
import pickle
import resource
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import warnings
import zipfile

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
import pth_hostile  # pylint: disable=g-import-not-at-top,wrong-import-position
from oracle_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from oracle_jax.interop import pth_reader, torch_import  # pylint: disable=g-import-not-at-top,wrong-import-position

CORPUS = pathlib.Path(__file__).parent / 'data' / 'pth_fuzz'
SEEDS = {p.name: p.read_bytes() for p in sorted(CORPUS.glob('*.pth'))}
OUTCOMES = collections.Counter()

# ----------------------------------------------------------------------------- containers


def unzip(data):
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    return [(i.filename, archive.read(i)) for i in archive.infolist()]


def rezip(records):
  buf = io.BytesIO()
  with warnings.catch_warnings(), zipfile.ZipFile(buf, 'w') as archive:
    warnings.simplefilter('ignore')  # 'Duplicate name': wanted here
    for name, content in records:
      archive.writestr(zipfile.ZipInfo(name), content)
  return buf.getvalue()


def with_pickle(data, change):
  """`data` with its main pickle replaced by `change(pickle)`, its container kept valid."""
  if data.startswith(b'PK'):
    records = [(n, change(c) if n.endswith('/data.pkl') else c) for n, c in unzip(data)]
    return rezip(records)
  header, main, tail = pth_hostile.legacy_split(data)
  return header + change(main) + tail


# ----------------------------------------------------------------------------- mutations

# Opcodes (with arguments) spliced into genuine pickles: containers, memo, globals (allowed
# and refused), persistent ids, calls, and values at the edges of what the reader accepts.
SNIPPETS = [
    b'(', b')', b']', b'}', b'\x8f', b't', b'l', b'd', b'\x85', b'\x86', b'\x87', b'a', b'e',
    b's', b'u', b'\x90', b'\x91', b'0', b'1', b'2', b'N', b'\x88', b'\x89', b'R', b'b',
    b'\x81', b'\x93', b'\x94', b'Q', b'.', b'q\x00', b'q\x01', b'h\x00', b'h\x01',
    b'r\xff\xff\xff\xff', b'j\x00\x00\x00\x00', b'K\x00', b'K\x01', b'J\xff\xff\xff\xff',
    b'\x8a\x09' + b'\xff' * 9, b'\x8a\x11' + b'\x01' * 17, b'\x8b\x00\x01\x00\x00' + b'\x07' * 256,
    b'G\x7f\xf0\x00\x00\x00\x00\x00\x00', b'X\x01\x00\x00\x000', b'X\x04\x00\x00\x00cpu.',
    b'\x8c\x07storage', b'\x95\x10\x00\x00\x00\x00\x00\x00\x00',
    b'ctorch._utils\n_rebuild_tensor_v2\n', b'ctorch\nFloatStorage\n',
    b'ccollections\nOrderedDict\n', b'cbuiltins\nset\n', b'ctorch\nSize\n',
    b'cmodels.resnet\nNet\n', b'c__main__\nBlock\n', b'cos\nsystem\n', b'cbuiltins\neval\n',
    b'(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ',
    b'(K\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt',
]


def mutate_bytes(draw, data, max_changes=4):
  data = bytearray(data)
  for _ in range(draw(st.integers(1, max_changes))):
    if not data:
      break
    kind = draw(st.sampled_from(['flip', 'cut', 'delete', 'repeat', 'splice']))
    at = draw(st.integers(0, len(data) - 1))
    if kind == 'flip':
      data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == 'cut':
      del data[at:]
    elif kind == 'delete':
      del data[at:at + draw(st.integers(1, 16))]
    elif kind == 'repeat':
      piece = data[at:at + draw(st.integers(1, 64))]
      data[at:at] = piece * draw(st.integers(1, 8))
    else:
      data[at:at] = draw(st.sampled_from(SNIPPETS))
  return bytes(data)


def mutate_records(draw, data):
  """A zip with one record duplicated, relabelled, dropped, or given lying sizes."""
  records = unzip(data)
  i = draw(st.integers(0, len(records) - 1))
  kind = draw(st.sampled_from(['duplicate', 'relabel', 'drop', 'swap', 'size']))
  if kind == 'duplicate':
    records.insert(draw(st.integers(0, len(records))), records[i])
  elif kind == 'relabel':
    j = draw(st.integers(0, len(records) - 1))
    records[i] = (records[j][0], records[i][1])
  elif kind == 'drop':
    del records[i]
  elif kind == 'swap':
    j = draw(st.integers(0, len(records) - 1))
    records[i], records[j] = (records[i][0], records[j][1]), (records[j][0], records[i][1])
  if kind != 'size':
    return rezip(records)
  data = bytearray(rezip(records))  # a central directory entry's sizes: made to lie
  entries = [p for p in range(len(data)) if data.startswith(b'PK\x01\x02', p)]
  entry = entries[i % len(entries)]
  field = draw(st.sampled_from([20, 24]))  # compressed or uncompressed size
  struct.pack_into('<I', data, entry + field, draw(st.sampled_from(
      [0, 1, len(data), 2**31, 2**32 - 1, struct.unpack_from('<I', data, entry + field)[0] + 1])))
  return bytes(data)


@st.composite
def mutated(draw):
  name = draw(st.sampled_from(sorted(SEEDS)))
  data = SEEDS[name]
  where = draw(st.sampled_from(['file', 'pickle', 'records'] if data.startswith(b'PK')
                               else ['file', 'pickle']))
  if where == 'file':
    return mutate_bytes(draw, data)
  if where == 'records':
    return mutate_records(draw, data)
  return with_pickle(data, lambda p: mutate_bytes(draw, p, max_changes=6))


# ----------------------------------------------------------------------------- the opcode grammar

def _value_ops():
  ints = st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(-2**130, 2**130),
                   st.sampled_from([0, 1, 2**48 - 1, 2**48, 2**61 - 1, 2**63, 2**128]))
  return st.one_of(
      ints.map(lambda i: pickle.dumps(i, 2)[2:-1]),
      st.text(max_size=12).map(lambda s: pickle.dumps(s, 2)[2:-1]),
      st.binary(max_size=12).map(lambda b: b'C' + bytes([len(b)]) + b),
      st.floats().map(lambda f: b'G' + struct.pack('>d', f)),
      st.sampled_from([b'N', b'\x88', b'\x89', b')', b']', b'}', b'\x8f']),
      _tensors(),
  )


def _tensors():
  """`_rebuild_tensor_v2` calls on storage '0', sizes and strides of one length."""
  return st.integers(0, 3).flatmap(lambda ndim: st.builds(
      _tensor, st.sampled_from([4, 4, 1, 0, 2**40]),
      st.lists(st.sampled_from(EDGES), min_size=ndim, max_size=ndim),
      st.lists(st.sampled_from(EDGES), min_size=ndim, max_size=ndim),
      st.sampled_from([0, 0, 0, 1] + EDGES)))


# Sizes, strides and offsets: mostly plausible, some at or past what the reader allows.
EDGES = [0, 1, 1, 2, 3, 4, 2**31, 2**48 - 1, 2**48, 2**63, 2**70]


def _tensor(numel, size, stride, offset=0):
  return (b'ctorch._utils\n_rebuild_tensor_v2\n(' + b'(X\x07\x00\x00\x00storage'
          b'ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu' +
          pickle.dumps(numel, 2)[2:-1] + b'tQ' + pickle.dumps(offset, 2)[2:-1] +
          pickle.dumps(tuple(size), 2)[2:-1] + pickle.dumps(tuple(stride), 2)[2:-1] +
          b'\x89ccollections\nOrderedDict\n)RtR')


STRUCTURE_OPS = [b'(', b't', b'l', b'd', b'\x85', b'\x86', b'\x87', b'a', b'e', b's', b'u',
                 b'\x90', b'\x91', b'0', b'1', b'2', b'R', b'b', b'\x81', b'\x93', b'\x94',
                 b'Q', b'ccollections\nOrderedDict\n', b'cbuiltins\nset\n', b'ctorch\nSize\n',
                 b'cmodels.resnet\nBlock\n', b'ctorch._utils\n_rebuild_parameter\n',
                 b'X\x08\x00\x00\x00_modulesX\x0b\x00\x00\x00_parameters']


def _opcodes(x):
  return pickle.dumps(x, 2)[2:-1]


KEYS = st.one_of(st.sampled_from(['w', 'bias', 'layer1.0', '_modules', '_parameters',
                                  '_buffers', 'state_dict', 'model', 'training']).map(_opcodes),
                 st.sampled_from([0, 7, -1, 2**61 - 2, 2**61, 2**64, 1.5, True, None, b'k',
                                  ()]).map(_opcodes))
ORDERED_DICT, SET = b'ccollections\nOrderedDict\n', b'cbuiltins\nset\n'


def _containers(children):
  """Well-formed containers of well-formed values: the places torch's pickles nest."""
  items = st.lists(st.tuples(KEYS, children), max_size=5).map(
      lambda kv: b''.join(k + v for k, v in kv))
  values = st.lists(children, max_size=5).map(b''.join)
  return st.one_of(
      values.map(lambda v: b'(' + v + b't'), values.map(lambda v: b'(' + v + b'l'),
      items.map(lambda i: b'}(' + i + b'u'), items.map(lambda i: b'(' + i + b'd'),
      items.map(lambda i: ORDERED_DICT + b')R(' + i + b'u'),
      st.lists(st.tuples(KEYS, children), max_size=4).map(  # Python 2's OrderedDict(pairs)
          lambda kv: ORDERED_DICT + b'((' + b''.join(b'(' + k + v + b'l' for k, v in kv) +
          b'ltR'),
      st.lists(KEYS, max_size=4).map(lambda k: SET + b'((' + b''.join(k) + b'ltR'),
      items.map(lambda i: b'cmodels.resnet\nNet\n)\x81}(' + i + b'ub'),  # a module
      children.map(lambda t: b'ctorch._utils\n_rebuild_parameter\n(' + t + b'\x88' +
                   ORDERED_DICT + b')RtR'),
      st.tuples(children, st.integers(0, 8)).map(lambda t: t[0] + b'q' + bytes([t[1]])),
      st.integers(0, 8).map(lambda i: b'h' + bytes([i])),  # memoised earlier, or not
  )


@st.composite
def generated(draw):
  """A pickle from the opcode grammar, in a zip (one storage, '0') or a legacy file: mostly
  well-formed values (scalars, tensors, containers, modules, memo references), sometimes
  a raw run of opcodes."""
  if draw(st.integers(0, 3)):
    value = draw(st.recursive(st.one_of(_value_ops(), _tensors()), _containers,
                              max_leaves=20))
    if draw(st.booleans()):
      value = b'}(' + _opcodes('state_dict') + value + b'u'
  else:
    memo_ops = st.integers(0, 8).flatmap(lambda i: st.sampled_from(
        [b'q' + bytes([i]), b'h' + bytes([i])]))
    value = b''.join(draw(st.lists(st.one_of(_value_ops(), _tensors(),
                                             st.sampled_from(STRUCTURE_OPS), memo_ops),
                                   max_size=60)))
  body = b'\x80' + bytes([draw(st.sampled_from([2, 4]))]) + value + b'.'
  storage = draw(st.one_of(st.just(bytes(range(16))), st.binary(max_size=64)))  # 4 floats
  if draw(st.booleans()):
    records = [('archive/data.pkl', body), ('archive/data/0', storage)]
    if draw(st.booleans()):
      records.append(('archive/byteorder', draw(st.sampled_from([b'little', b'big']))))
    return rezip(records)
  header = b''.join(pickle.dumps(x, 2) for x in (
      0x1950A86A20F9469CFC6C, 1001, {'little_endian': True}))  # the legacy magic, version
  tail = pickle.dumps(['0'], 2) + (len(storage) // 4).to_bytes(8, 'little') + storage
  return header + body + tail


# ----------------------------------------------------------------------------- the check

class _TooSlow(Exception):
  pass


def _alarm(signum, frame):
  del signum, frame
  raise _TooSlow


def check(data, directory):
  """Reads `data` as a .pth: it loads or raises the reader's UserError, in bounds."""
  path = os.path.join(directory, 'case.pth')
  with open(path, 'wb') as f:
    f.write(data)
  limit = 2.0 + 20e-6 * len(data)
  signal.setitimer(signal.ITIMER_REAL, limit)
  tracemalloc.start()
  start = time.perf_counter()
  try:
    torch_import.read_state_dict(path)
    OUTCOMES['read'] += 1
  except (pth_reader.MalformedCheckpointError, pth_reader.UnsafeCheckpointError) as e:
    OUTCOMES[type(e).__name__] += 1
    assert '\n' not in str(e) and path in str(e), str(e)
  except errors.UserError as e:
    raise AssertionError(f'not the reader\'s error: {type(e).__name__}: {e}') from e
  except _TooSlow:
    raise AssertionError(f'{len(data)} bytes took over {limit:.2f} s') from None
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  units = pth_reader.UNITS_PER_BYTE * len(data) + pth_reader.BASE_UNITS
  assert peak <= 8 * units + 3 * len(data) + (1 << 20), (len(data), peak)
  return seconds


def run(examples, seed_value, memory_mib):
  resource.setrlimit(resource.RLIMIT_AS, (memory_mib << 20, memory_mib << 20))
  signal.signal(signal.SIGALRM, _alarm)
  with tempfile.TemporaryDirectory() as directory:
    @settings(max_examples=examples, database=None, deadline=None, print_blob=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(st.one_of(mutated(), generated()))
    def fuzz(data):
      check(data, directory)
    for data in SEEDS.values():  # the genuine files themselves read
      check(data, directory)
    assert OUTCOMES['read'] == len(SEEDS), OUTCOMES
    fuzz()
  return OUTCOMES


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--examples', type=int, default=20000)
  parser.add_argument('--seed', type=int, default=1)
  parser.add_argument('--memory_mib', type=int, default=3072, help='RLIMIT_AS of the run')
  args = parser.parse_args()
  start = time.perf_counter()
  outcomes = run(args.examples, args.seed, args.memory_mib)
  print(f'{sum(outcomes.values())} inputs in {time.perf_counter() - start:.0f} s: ' +
        ', '.join(f'{n} {k}' for k, n in sorted(outcomes.items())))


if __name__ == '__main__':
  main()
