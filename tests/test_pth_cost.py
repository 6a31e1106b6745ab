"""A hostile .pth costs what its size warrants: each class of the bounded-reading issue
(`pth_hostile`), built at two sizes, ends in a clean UserError or a bounded accept, its
peak memory (tracemalloc: deterministic) within the reader's contract, its work (the
reader's own budget counter) within the budget, and its time growing like the file."""
import time
import tracemalloc

import numpy as np
import pytest
import pth_hostile
from conftest import REFERENCE_DIR

from oracle_jax import errors
from oracle_jax.interop import pth_reader, torch_import

SMALL, LARGE = 4, 16
# At the large size: a fragment of the error each must end in (None: read, bounded).
OUTCOMES = {
    'module graph: cycle': 'its pickled module contains itself',
    'module graph: lattice of shared blocks': 'costs more than its size warrants',
    'module graph: deep chain, long memoised name': 'costs more than its size warrants',
    'module graph: modules sharing one _parameters': 'costs more than its size warrants',
    'memo reuse: set of a memoised list': 'costs more than its size warrants',
    'memo reuse: OrderedDict of memoised pairs': 'costs more than its size warrants',
    'memo reuse: BUILD of one memoised state': 'costs more than its size warrants',
    'memo reuse: tensor metadata': 'a tensor has metadata that is not a small dict',
    'memo reuse: STACK_GLOBAL of a long memoised name': 'costs more than its size warrants',
    'unbounded ints: stride overflow on a size-1 dim': 'a tensor stride is not a tuple',
    'unbounded ints: huge dims of empty tensors': 'its pickle holds an integer of',
    'unbounded ints: a huge memoised int key': 'its pickle holds an integer of',
    'colliding keys: ints of one hash': 'a dict key or set member is an integer beyond 2**61',
    'lying zip records: sizes reaching the end': 'stored bytes for 4 bytes of data',
    'big-endian: views of one storage': None,
}


def test_every_class_has_an_outcome():
  assert set(OUTCOMES) == set(pth_hostile.CLASSES)


@pytest.fixture(name='budgets')
def fixture_budgets(monkeypatch):
  """Every Budget the reader makes, to read its counters."""
  made = []

  class Recorded(pth_reader.Budget):
    def __init__(self):
      super().__init__()
      made.append(self)
  monkeypatch.setattr(pth_reader, 'Budget', Recorded)
  return made


def read(path):
  """None if the file reads, else the UserError's message."""
  try:
    torch_import.read_state_dict(str(path))
    return None
  except errors.UserError as e:
    assert isinstance(e, (pth_reader.MalformedCheckpointError,
                          pth_reader.UnsafeCheckpointError)), type(e)
    assert str(path) in str(e) and '\n' not in str(e)
    return str(e)


def cost(path, budgets):
  """(outcome, peak bytes, seconds, the budget) of reading `path`."""
  budgets.clear()
  tracemalloc.start()
  try:
    outcome = read(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  budget = budgets[0]
  start = time.process_time()  # CPU time: the machine is shared
  assert read(path) == outcome
  return outcome, peak, time.process_time() - start, budget


def pickle_bytes(budget):
  return 0 if budget.file is None else (
      (budget.limit - pth_reader.BASE_UNITS) // pth_reader.UNITS_PER_BYTE)


@pytest.mark.parametrize('name', list(pth_hostile.CLASSES))
def test_cost_grows_like_the_file(name, tmp_path, budgets):
  runs = {}
  for scale in (SMALL, LARGE):
    path = tmp_path / f'{scale}.pth'
    path.write_bytes(pth_hostile.CLASSES[name](scale))
    outcome, peak, seconds, budget = cost(path, budgets)
    size, pickled = path.stat().st_size, pickle_bytes(budget)
    # The contract: 8 bytes a unit, units per pickle byte, storages held once, the file.
    assert peak <= 8 * (pth_reader.UNITS_PER_BYTE * pickled + pth_reader.BASE_UNITS) + \
        2 * size + (1 << 20), (scale, peak, size)
    assert budget.spent <= budget.limit + 256 or outcome  # over budget ⇒ refused
    runs[scale] = size, seconds, outcome
  (small_size, small_time, _), (large_size, large_time, outcome) = runs[SMALL], runs[LARGE]
  assert large_size >= 2 * small_size  # the construction grows
  assert large_time <= 3 * (large_size / small_size) * small_time + 0.5, runs
  expected = OUTCOMES[name]
  assert outcome is None if expected is None else expected in outcome, outcome


def test_big_endian_views_of_one_storage_are_swapped_once(tmp_path):
  """Many views of one big-endian storage: right values, one copy of the storage."""
  values = np.arange(64, dtype=np.float32)
  views = b''.join(pth_hostile.v(f'w{i}') + pth_hostile.tensor('0', 64, (8, 8), (8, 1))
                   for i in range(50))
  views += pth_hostile.v('t') + pth_hostile.tensor('0', 64, (8, 8), (1, 8))
  path = tmp_path / 'big.pth'
  path.write_bytes(pth_hostile.zip_file(pth_hostile.program(b'}(' + views + b'u'),
                                        {'0': values.astype('>f4').tobytes()},
                                        byteorder=b'big'))
  state = torch_import.read_state_dict(str(path))
  for i in range(50):
    np.testing.assert_array_equal(state[f'w{i}'], values.reshape(8, 8))
    assert np.shares_memory(state[f'w{i}'], state['w0'])
  np.testing.assert_array_equal(state['t'], values.reshape(8, 8).T)


def test_genuine_files_stay_well_within_the_budget(budgets):
  """The reference checkpoints (state_dicts, a pickled module) use under half of it."""
  for path in sorted((REFERENCE_DIR / 'torch').glob('*.pth')):
    budgets.clear()
    torch_import.read_state_dict(str(path))
    budget = budgets[0]
    assert budget.spent < 0.5 * pth_reader.UNITS_PER_BYTE * pickle_bytes(budget), path
