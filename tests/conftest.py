"""Test set-up: 8 virtual CPU devices, so sharded code is exercised on one machine, and
one fresh compilation cache for the session, shared with the subprocesses it starts."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Many tests and their subprocesses (which inherit the environment, and with it this
# directory as `config.compilation_cache_dir`) compile the same small programs: compile
# them once per session. Fresh each session: no test depends on an earlier session's cache.
SESSION_COMPILATION_CACHE = tempfile.mkdtemp(prefix='oracle_jax_xla_cache_')
os.environ['JAX_COMPILATION_CACHE_DIR'] = SESSION_COMPILATION_CACHE
atexit.register(shutil.rmtree, SESSION_COMPILATION_CACHE, ignore_errors=True)

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import compilation_cache  # pylint: disable=g-import-not-at-top,wrong-import-position

compilation_cache.enable(SESSION_COMPILATION_CACHE)  # in-process tests use it as a run does

REFERENCE_DIR = pathlib.Path(__file__).parent / 'data' / 'reference'
REFERENCE_CASES = {
    # case: (teacher, student, num_classes)
    'cifar100_r32_r20': ('resnet32', 'resnet20', 100),
    'cifar10_r20_r20': ('resnet20', 'resnet20', 10),
}


@pytest.fixture(scope='session', params=sorted(REFERENCE_CASES))
def reference(request):
  """One reference case: its npz arrays plus architectures and class count."""
  z = np.load(REFERENCE_DIR / f'{request.param}.npz')
  teacher, student, num_classes = REFERENCE_CASES[request.param]
  return dict(case=request.param, z=z, teacher=teacher, student=student,
              num_classes=num_classes)


def state_dict_from(z, prefix):
  return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory):
  """One TFDS data dir for the session: the digits builder prepares itself there once."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def digits_teacher(digits_data_dir, tmp_path_factory):
  """A resnet8 digits teacher trained for 30 steps: (checkpoint dir, results)."""
  from helpers import digits_config  # pylint: disable=g-import-not-at-top
  from oracle_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('teacher')
  config = digits_config(digits_data_dir, method='scratch', train_steps=30)
  results = train.train_and_evaluate(config, str(workdir))
  return str(workdir / 'teacher'), results


@pytest.fixture(scope='session')
def digits_teacher_dir(digits_teacher):
  return digits_teacher[0]
