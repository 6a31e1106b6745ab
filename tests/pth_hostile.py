"""Hostile .pth files of the bounded-reading issue, each built at a chosen scale.

`CLASSES` maps a name to `build(scale) -> bytes`: the same construction, its file growing
linearly with `scale`. `tests/test_pth_cost.py` checks the reader's cost grows no faster
than the file; `python tests/pth_hostile.py [--code=DIR]` measures time, peak memory and
outcome of each in a subprocess (the numbers of the issue's note; DIR: another checkout,
e.g. the code before the budget).
"""
import io
import pickle
import pickletools
import struct
import zipfile


# ----------------------------------------------------------------------------- pickle assembly


def v(obj):
  """Opcodes pushing the plain value `obj` (no PROTO, STOP or memo)."""
  buf = io.BytesIO()
  pickler = pickle.Pickler(buf, protocol=2)
  pickler.fast = True
  pickler.dump(obj)
  return buf.getvalue()[2:-1]


def g(module, name):
  return f'c{module}\n{name}\n'.encode()


def call(func, *args):
  return func + b'(' + b''.join(args) + b'tR'


def put(index):
  return b'r' + index.to_bytes(4, 'little')  # LONG_BINPUT


def get(index):
  return b'j' + index.to_bytes(4, 'little')  # LONG_BINGET


def legacy_split(data):
  """(header: three pickles, main pickle, tail) of a legacy file."""
  stream = io.BytesIO(data)
  ends = []
  for _ in range(4):
    list(pickletools.genops(stream))
    ends.append(stream.tell())
  return data[:ends[2]], data[ends[2]:ends[3]], data[ends[3]:]


def program(body):
  return b'\x80\x02' + body + b'.'


def module(cls, state):
  """A stand-in module `cls` (NEWOBJ) whose state is the dict pushed by `state`."""
  return g('models.resnet', cls) + b')\x81' + state + b'b'


def storage_ref(key, numel, storage_type='FloatStorage'):
  return b'(' + v('storage') + g('torch', storage_type) + v(key) + v('cpu') + v(numel) + b'tQ'


def tensor(key, numel, size, stride, offset=0, storage_type='FloatStorage'):
  return call(g('torch._utils', '_rebuild_tensor_v2'), storage_ref(key, numel, storage_type),
              v(offset), v(tuple(size)), v(tuple(stride)), v(False),
              call(g('collections', 'OrderedDict')))


def zip_file(data_pkl, storages=None, byteorder=b'little'):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as archive:
    archive.writestr('archive/data.pkl', data_pkl)
    archive.writestr('archive/byteorder', byteorder)
    for key, raw in (storages or {}).items():
      archive.writestr(f'archive/data/{key}', raw)
  return buf.getvalue()


# ----------------------------------------------------------------------------- the classes
# Each file grows linearly with `scale`; what a naive reader does with it grows faster.

def module_cycle(scale):
  """A module whose `_modules` holds itself, beside 10*scale plain submodules."""
  leaves = b''.join(v(f'leaf{i}') + module('Leaf', v({'_modules': {}}))
                    for i in range(10 * scale))
  return zip_file(program(g('models.resnet', 'ResNet') + b')\x81' + put(0) + b'}(' +
                          v('_modules') + b'}(' + v('self') + get(0) + leaves + b'uub'))


def module_lattice(scale):
  """`scale` levels of blocks, each holding the one below twice: 2**scale paths."""
  body = module('Block', v({'_modules': {}})) + put(0)
  for _ in range(scale):  # each new block replaces the memo entry of the one below
    body += module('Block', b'}(' + v('_modules') + b'}(' + v('a') + get(0) + v('b') +
                   get(0) + b'uu') + put(0)
  return zip_file(program(body))


def module_chain_long_name(scale):
  """A chain of 10*scale modules, each the child of the one above under one memoised
  1 KB name: keys grow with the depth."""
  param = tensor('0', 1, (1,), (1,))
  body = module('Leaf', b'}(' + v('_modules') + b'}' + v('_parameters') + b'}(' + v('w') +
                param + b'uu')
  for _ in range(10 * scale):
    body = module('Block', b'}(' + v('_modules') + b'}(' + get(1) + body + b'uu')
  return zip_file(program(v('n' * 1000) + put(1) + b'0' + body), {'0': b'\0' * 4})


def _root_with_modules(children):
  return module('ResNet', b'}(' + v('_modules') + b'}(' + children + b'uu')


def modules_sharing_parameters(scale):
  """20*scale submodules sharing one `_parameters` dict of 20*scale entries (memoised)."""
  params = b'}(' + b''.join(v(f'w{i}') + get(1) for i in range(20 * scale)) + b'u'
  body = tensor('0', 1, (1,), (1,)) + put(1) + b'0' + params + put(2) + b'0'
  children = b''.join(v(f'm{i}') + module('Leaf', b'}(' + v('_modules') + b'}' +
                                          v('_parameters') + get(2) + b'u')
                      for i in range(20 * scale))
  return zip_file(program(body + _root_with_modules(children)), {'0': b'\0' * 4})


def memo_set_from_list(scale):
  """`builtins.set` of one memoised list of 100*scale items, 100*scale times."""
  items = v(list(range(100 * scale))) + put(0)
  calls = (g('builtins', 'set') + b'(' + get(0) + b'tRa') * (100 * scale)
  return zip_file(program(b']' + items + b'0' + calls))


def memo_ordered_dict_from_pairs(scale):
  """`collections.OrderedDict` of one memoised list of 50*scale pairs, 50*scale times."""
  pairs = v([[f'k{i}', i] for i in range(50 * scale)]) + put(0)
  calls = (g('collections', 'OrderedDict') + b'(' + get(0) + b'tRa') * (50 * scale)
  return zip_file(program(b']' + pairs + b'0' + calls))


def memo_build_repeated_state(scale):
  """100*scale stand-ins, each BUILD from one memoised state dict of 100*scale entries."""
  state = v({f'a{i}': i for i in range(100 * scale)}) + put(0)
  objs = (g('models.resnet', 'Net') + b')\x81' + get(0) + b'ba') * (100 * scale)
  return zip_file(program(b']' + state + b'0' + objs))


def memo_tensor_metadata(scale):
  """20*scale tensors sharing one memoised metadata dict of 100*scale entries."""
  meta = v({f'k{i}': False for i in range(100 * scale)}) + put(0)
  one = call(g('torch._utils', '_rebuild_tensor_v2'), storage_ref('0', 1), v(0), v((1,)),
             v((1,)), v(False), call(g('collections', 'OrderedDict')), get(0))
  return zip_file(program(b']' + meta + b'0' + (one + b'a') * (20 * scale)),
                  {'0': b'\0' * 4})


def memo_stack_global_name(scale):
  """STACK_GLOBAL 100*scale times of one memoised dotted name of 100*scale parts."""
  dotted = '.'.join(['pkg'] * (100 * scale))
  body = b']' + v(dotted) + put(0) + b'0' + v('Net') + put(1) + b'0'
  return zip_file(program(body + (get(0) + get(1) + b'\x93a') * (100 * scale)))


def int_stride_overflow(scale):
  """A size-1 dimension whose stride overflows a C long, after 10*scale tensors."""
  ok = b''.join(v(f'w{i}') + tensor('0', 1, (1,), (1,)) for i in range(10 * scale))
  bad = v('bad') + tensor('0', 1, (1, 1), (2**70, 1))
  return zip_file(program(b'}(' + ok + bad + b'u'), {'0': b'\0' * 4})


def int_huge_dims(scale):
  """10*scale empty tensors of dims 0 x 10**(10*scale) x 10**(10*scale)."""
  huge = 10**(10 * scale)
  one = tensor('0', 1, (0, huge, huge), (1, 1, 1))
  return zip_file(program(b'(' + one * (10 * scale) + b'l'), {'0': b'\0' * 4})


def int_huge_keys(scale):
  """One memoised integer of 400*scale bits, a dict key 100*scale times."""
  items = (b'}' + get(0) + v(1) + b's') * (100 * scale)
  return zip_file(program(b'(' + v(2**(400 * scale) - 1) + put(0) + b'0' + items + b'l'))


def colliding_int_keys(scale):
  """One dict of 100*scale integer keys of one hash (k * (2**61 - 1))."""
  items = b''.join(v(k * (2**61 - 1)) + b'N' for k in range(1, 100 * scale + 1))
  return zip_file(program(b'}(' + items + b'u'))


def lying_zip_records(scale):
  """10*scale storages whose central directory entries each claim the rest of the file."""
  count = 10 * scale
  body = b'(' + b''.join(tensor(str(i), 1, (1,), (1,)) for i in range(count)) + b'l'
  data = bytearray(zip_file(program(body), {str(i): b'\0' * 4 for i in range(count)}))
  directory = data.rfind(b'PK\x05\x06')
  position = 0
  while (position := data.find(b'PK\x01\x02', position)) >= 0:
    name_length, = struct.unpack_from('<H', data, position + 28)
    offset, = struct.unpack_from('<I', data, position + 42)
    if b'/data/' in data[position + 46:position + 46 + name_length]:
      struct.pack_into('<I', data, position + 20, directory - offset)  # compressed size
    position += 46
  return bytes(data)


def big_endian_views(scale):
  """10*scale tensors viewing one big-endian storage of 16*scale KB."""
  numel = 4096 * scale
  views = b''.join(v(f'w{i}') + tensor('0', numel, (numel,), (1,)) for i in range(10 * scale))
  return zip_file(program(b'}(' + views + b'u'), {'0': b'\0' * (4 * numel)}, byteorder=b'big')


CLASSES = {
    'module graph: cycle': module_cycle,
    'module graph: lattice of shared blocks': module_lattice,
    'module graph: deep chain, long memoised name': module_chain_long_name,
    'module graph: modules sharing one _parameters': modules_sharing_parameters,
    'memo reuse: set of a memoised list': memo_set_from_list,
    'memo reuse: OrderedDict of memoised pairs': memo_ordered_dict_from_pairs,
    'memo reuse: BUILD of one memoised state': memo_build_repeated_state,
    'memo reuse: tensor metadata': memo_tensor_metadata,
    'memo reuse: STACK_GLOBAL of a long memoised name': memo_stack_global_name,
    'unbounded ints: stride overflow on a size-1 dim': int_stride_overflow,
    'unbounded ints: huge dims of empty tensors': int_huge_dims,
    'unbounded ints: a huge memoised int key': int_huge_keys,
    'colliding keys: ints of one hash': colliding_int_keys,
    'lying zip records: sizes reaching the end': lying_zip_records,
    'big-endian: views of one storage': big_endian_views,
}


# ----------------------------------------------------------------------------- measuring

_CHILD = '''
import json, resource, signal, sys, time
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from oracle_jax import errors, torch_import
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
class TooSlow(BaseException):
  pass
def alarm(*_):
  raise TooSlow
signal.signal(signal.SIGALRM, alarm)
signal.alarm(int(sys.argv[3]))  # the imports (slow on a busy machine) do not count
start = time.perf_counter()
try:
  torch_import.read_state_dict(sys.argv[1])
  outcome = 'accepted'
except errors.UserError as e:
  outcome = type(e).__name__ + ': ' + str(e).split(': ', 1)[-1][:100]
except TooSlow:
  outcome = 'TIMEOUT after ' + sys.argv[3] + ' s'
except BaseException as e:  # what the issue is about: anything but a UserError
  outcome = 'ESCAPED ' + type(e).__name__
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
print(json.dumps({'seconds': seconds, 'peak_mib': peak / 1024, 'outcome': outcome}))
'''


def measure(path, code_dir, memory_mib=4096, timeout=60):
  """{seconds, peak_mib (over the imports), outcome} of reading `path` in a subprocess."""
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  env = {**os.environ, 'PYTHONPATH': code_dir, 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run([sys.executable, '-c', _CHILD, str(path), str(memory_mib),
                         str(timeout)], capture_output=True, text=True, env=env,
                        timeout=timeout + 600, check=False)
  if done.returncode:
    return {'seconds': float('nan'), 'peak_mib': float('nan'),
            'outcome': 'CRASHED ' + (done.stderr.strip().splitlines() or ['?'])[-1][:80]}
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  import argparse, os, pathlib, tempfile  # pylint: disable=g-import-not-at-top,multiple-imports
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--code', default=str(pathlib.Path(__file__).parents[1]),
                      help='checkout whose oracle_jax reads the files')
  parser.add_argument('--scales', default='4,16', help='comma-separated scales')
  parser.add_argument('--memory_mib', type=int, default=4096, help='RLIMIT_AS of the reader')
  parser.add_argument('--timeout', type=int, default=60)
  parser.add_argument('--only', default='', help='classes whose name contains this')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    for name, build in CLASSES.items():
      if args.only not in name:
        continue
      for scale in map(int, args.scales.split(',')):
        path = os.path.join(tmp, 'hostile.pth')
        with open(path, 'wb') as f:
          f.write(build(scale))
        r = measure(path, args.code, args.memory_mib, args.timeout)
        print(f'| {name} | {scale} | {os.path.getsize(path) / 1024:.1f} KB | '
              f'{r["seconds"]:.2f} s | {r["peak_mib"]:.0f} MiB | {r["outcome"]} |', flush=True)


if __name__ == '__main__':
  main()
