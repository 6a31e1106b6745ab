"""The persistent compilation cache: a warm run is bit for bit a cold one, entries are
keyed on compiler options, and an unusable directory costs one warning, never a run."""
import errno
import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, digits_config, final_params, main_command
from oracle_jax import compilation_cache, conv, fileio
from test_object_storage import gcs  # pylint: disable=unused-import  (the emulator fixture)


@pytest.fixture(autouse=True)
def session_cache_after():
  yield
  compilation_cache.enable()  # back to the session's cache (JAX_COMPILATION_CACHE_DIR)


@pytest.fixture
def events():
  """How many JAX reported of each compilation-cache event while the test ran."""
  counts = {'hits': 0, 'written': 0}
  names = {'/jax/compilation_cache/cache_hits': 'hits',
           '/jax/compilation_cache/cache_misses': 'written'}  # recorded when an entry is written

  def listener(event, **_):
    if event in names:
      counts[names[event]] += 1

  jax.monitoring.register_event_listener(listener)
  yield counts
  jax.monitoring.unregister_event_listener(listener)


def entries(directory):
  return sorted(p.name for p in fileio.path(directory).glob('*-cache'))


def programs(seed):
  """Two small programs only this module compiles, run on fixed inputs; new functions at
  each call, so that JAX's in-memory caches miss and the persistent cache is asked."""
  x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6) + seed
  first = jax.jit(lambda a: jnp.tanh(a) @ a.T + seed)(x)
  second = jax.jit(lambda a: jnp.sort(a * (seed + 2), axis=0))(x)
  return np.asarray(first), np.asarray(second)


def assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_default_directory_and_off(monkeypatch, tmp_path, events):
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))
  assert compilation_cache.default_directory() == str(tmp_path / 'env')
  from configs import common  # pylint: disable=g-import-not-at-top
  assert common.base_config().compilation_cache_dir == 'auto'  # resolved by enable, as None
  assert compilation_cache.enable('auto') == str(tmp_path / 'env')
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
  assert compilation_cache.default_directory() == '~/.cache/oracle_jax/xla'

  assert compilation_cache.enable('') is None  # off, although the environment names one
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))
  programs(1)
  assert events == {'hits': 0, 'written': 0} and not (tmp_path / 'env').exists()


def test_warm_entries_are_hits_and_compiler_options_miss(tmp_path, events):
  directory = tmp_path / 'xla'
  assert compilation_cache.enable(directory) == str(directory)
  cold = programs(2)
  written = entries(directory)
  assert len(written) >= 2 and events['written'] == len(written)
  compilation_cache.enable(directory)  # as a fresh process would
  warm = programs(2)  # new functions: JAX's in-memory caches miss, the persistent one hits
  assert_same(cold, warm)
  assert entries(directory) == written and events['hits'] >= 2

  # The same program with conv_impl 'cpu's compiler options is another entry.
  x = jnp.ones((2, 8, 8, 3))
  w = jnp.ones((3, 3, 3, 4))
  conv2d = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), 'SAME', dimension_numbers=(
      'NHWC', 'HWIO', 'NHWC'))
  _, options = conv.choose('cpu', device_count=1, backend='cpu')
  assert options, 'this jaxlib has no CPU compiler options to tell apart'
  before = entries(directory)
  jax.jit(conv2d).lower(x, w).compile()
  plain = set(entries(directory)) - set(before)
  jax.jit(conv2d, compiler_options=options).lower(x, w).compile()
  tuned = set(entries(directory)) - set(before) - plain
  assert len(plain) == 1 and len(tuned) == 1
  assert next(iter(plain)).rsplit('-', 2)[0] == next(iter(tuned)).rsplit('-', 2)[0]  # same name


def _warnings_about(caplog, directory):
  return [r for r in caplog.records
          if r.levelno == logging.WARNING and str(directory) in r.getMessage()]


def _fail_writes(monkeypatch, code):
  def write_bytes(target, data):
    raise OSError(code, os.strerror(code), str(target))
  monkeypatch.setattr(fileio, 'write_bytes', write_bytes)


@pytest.mark.parametrize('kind', ['a file in its place', 'below a file', 'read-only', 'full'])
def test_unusable_directory_is_one_warning(kind, tmp_path, monkeypatch, caplog):
  compilation_cache.enable('')
  expected = programs(3)
  directory = tmp_path / 'xla'
  if kind == 'a file in its place':
    directory.write_text('not a directory')
  elif kind == 'below a file':
    (tmp_path / 'file').write_text('')
    directory = tmp_path / 'file' / 'xla'
  elif kind == 'read-only':
    directory.mkdir()
    directory.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the filesystem's answer to anyone else
      _fail_writes(monkeypatch, errno.EACCES)
  else:
    _fail_writes(monkeypatch, errno.ENOSPC)
  compilation_cache.enable(directory)
  with caplog.at_level(logging.WARNING):
    got = programs(3)
  assert_same(got, expected)
  assert len(_warnings_about(caplog, directory)) == 1, caplog.text
  assert 'cannot be used' in caplog.text and 'compilation_cache_dir' in caplog.text


def test_corrupted_entries_are_one_warning_and_replaced(tmp_path, caplog, events):
  directory = tmp_path / 'xla'
  compilation_cache.enable(directory)
  expected = programs(4)
  for name in entries(directory):
    entry = directory / name
    entry.write_bytes(entry.read_bytes()[:-7] + b'garbage')
  compilation_cache.enable(directory)
  with caplog.at_level(logging.WARNING):
    assert_same(programs(4), expected)
  assert len(_warnings_about(caplog, directory)) == 1 and 'corrupted' in caplog.text
  caplog.clear()
  compilation_cache.enable(directory)
  hits = events['hits']
  with caplog.at_level(logging.WARNING):
    assert_same(programs(4), expected)
  assert events['hits'] - hits >= 2 and not _warnings_about(caplog, directory)  # replaced


def _metrics(workdir):
  """Each metrics line without its clock readings (throughput, durations)."""
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  clock = ('per_s', 'per_sec', 'time', 'seconds', '_s')
  return [{k: v for k, v in l.items() if not any(k.endswith(c) for c in clock)} for l in lines]


def test_warm_run_is_bit_identical_to_a_cold_one(digits_data_dir, tmp_path):
  directory = tmp_path / 'xla'
  overrides = ['--config.train_steps=4', f'--config.compilation_cache_dir={directory}']
  for name in ('cold', 'warm'):
    subprocess.run(main_command(tmp_path / name, digits_data_dir, *overrides), check=True,
                   capture_output=True, timeout=600)
    if name == 'cold':
      written = entries(directory)
  assert written and entries(directory) == written  # the warm run compiled nothing new
  config = digits_config(digits_data_dir, method='scratch', train_steps=4)
  jax.tree.map(np.testing.assert_array_equal, final_params(config, str(tmp_path / 'cold')),
               final_params(config, str(tmp_path / 'warm')))
  cold, warm = (json.loads((tmp_path / n / 'results.json').read_text()) for n in ('cold', 'warm'))
  assert cold == warm and _metrics(tmp_path / 'cold') == _metrics(tmp_path / 'warm')


GCS_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp
    from oracle_jax import compilation_cache
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **_: hits.append(1) if event.endswith('cache_hits') else None)
    compilation_cache.enable('gs://bucket/xla')
    print(float(jax.jit(lambda a: jnp.sin(a).sum() * 3)(jnp.arange(5.))), len(hits))
''')


def test_a_gcs_directory_is_shared(gcs, tmp_path):  # pylint: disable=redefined-outer-name
  from test_object_storage import _listing  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs, GOOGLE_AUTH_TOKEN_FOR_TESTING='offline',
             EPATH_USE_TF='false', HOME=str(tmp_path))
  outputs = []
  for _ in range(2):  # two hosts of a pod, one after the other
    proc = subprocess.run([sys.executable, '-c', GCS_SCRIPT.format(repo=REPO)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'cannot be used' not in proc.stderr, proc.stderr[-3000:]
    outputs.append(proc.stdout.split())
    if len(outputs) == 1:
      written = [n for n in _listing(gcs) if n.startswith('xla/')]
  assert written and all(n.endswith('-cache') for n in written)
  assert outputs[0][0] == outputs[1][0] and outputs[0][1] == '0' and int(outputs[1][1]) >= 1
  assert sorted(n for n in _listing(gcs) if n.startswith('xla/')) == sorted(written)
  assert not list(tmp_path.glob('gs*'))  # nothing made locally in its name
