"""The teacher zoo over file:// URLs: fetch, verify, convert; every failure leaves nothing behind."""
import dataclasses
import io
import os
import urllib.request

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REFERENCE_DIR
from oracle_jax import checkpoints, teachers, torch_import, train, zoo

NAME = 'official/cifar100/resnet20'
PTH = REFERENCE_DIR / 'torch' / 'cifar100_resnet20_state_dict.pth'  # that very file


@pytest.fixture(name='local_registry')
def _local_registry(monkeypatch):
  """The real registry entry (URL swapped for the test copy of its file), so its pinned
  SHA-256 and size are checked against the genuine file; returns a setter for variants."""
  def use(**changes):
    teacher = dataclasses.replace(zoo.REGISTRY[NAME], **{'url': PTH.as_uri(), **changes})
    monkeypatch.setitem(zoo.REGISTRY, NAME, teacher)
    return teacher
  use()
  return use


def files_under(directory):
  return sorted(os.path.relpath(os.path.join(root, f), directory)
                for root, _, names in os.walk(directory) for f in names)


def assert_same_variables(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_fetch_converts_prints_and_loads_as_a_teacher(local_registry, tmp_path, capsys, monkeypatch):
  del local_registry
  assert zoo.main(['fetch', NAME, '--dir', str(tmp_path)]) == 0
  teacher_dir = tmp_path / 'official' / 'cifar100' / 'resnet20'
  assert capsys.readouterr().out.strip() == (
      f'--config.teacher.model=resnet20 --config.teacher.checkpoint={teacher_dir}')
  variables = teachers.read(str(teacher_dir), 'resnet20', 100)
  assert_same_variables(variables, torch_import.load(str(PTH), 'resnet20', 100))
  _, meta = checkpoints.load_model(teacher_dir)
  assert (meta['zoo'], meta['sha256'], meta['reference_top1']) == (
      NAME, zoo.REGISTRY[NAME].sha256, 68.65)
  assert (tmp_path / 'official' / 'cifar100' / 'resnet20.pth').read_bytes() == PTH.read_bytes()
  assert not [f for f in files_under(tmp_path) if '.download-' in f or '.converting-' in f]
  # Fetched once: a second fetch touches no network.
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('downloaded again'))
  assert zoo.fetch(NAME, tmp_path) == zoo.fetch(NAME, str(tmp_path))


def test_zoo_name_as_teacher_checkpoint(local_registry, tmp_path, monkeypatch):
  """`teacher.checkpoint = zoo:…` through the training code's teacher path."""
  del local_registry
  from configs import cifar  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('ORACLE_JAX_ZOO', str(tmp_path / 'zoo'))
  config = cifar.get_config('resnet20,resnet20')
  assert config.teacher.checkpoint == f'zoo:{NAME}'
  config.batch_size = config.eval_batch_size = 8
  with tfds.testing.mock_data(num_examples=8):
    _, teacher_variables = train.prepare(config)
  assert_same_variables(jax.device_get(teacher_variables),
                        torch_import.load(str(PTH), 'resnet20', 100))
  assert zoo.resolve('runs/t56/teacher') == 'runs/t56/teacher'  # paths pass through


def test_wrong_hash_keeps_nothing(local_registry, tmp_path):
  local_registry(sha256='0' * 64)
  with pytest.raises(zoo.ZooError, match='has SHA-256 1fccacf6.*expected 0000'):
    zoo.fetch(NAME, tmp_path)
  assert files_under(tmp_path) == []


def test_hash_prefix_as_torchvision_publishes_it(local_registry, tmp_path):
  local_registry(sha256='1fccacf6')
  assert zoo.fetch(NAME, tmp_path).exists()
  local_registry(sha256='1fccacf7')
  with pytest.raises(zoo.ZooError, match=r'expected 1fccacf7…'):
    zoo.download(PTH.as_uri(), tmp_path / 'again.pth', '1fccacf7', 1 << 30)
  assert not (tmp_path / 'again.pth').exists()


def test_missing_file_is_a_clear_error(local_registry, tmp_path):
  local_registry(url=(tmp_path / 'nowhere.pth').as_uri())
  with pytest.raises(zoo.ZooError, match='Could not download .*nowhere.pth.*nothing was kept'):
    zoo.fetch(NAME, tmp_path / 'zoo')
  assert files_under(tmp_path) == []


def test_oversized_download_is_refused(local_registry, tmp_path):
  local_registry(max_bytes=1000)
  with pytest.raises(zoo.ZooError, match='larger than the 1,000 bytes'):
    zoo.fetch(NAME, tmp_path)
  assert files_under(tmp_path) == []


class _Interrupted(io.RawIOBase):
  """A response that delivers one chunk, then fails as a dropped connection (or a ^C)."""

  def __init__(self, error):
    super().__init__()
    self.error, self.sent = error, False

  def read(self, size=-1):
    if self.sent:
      raise self.error
    self.sent = True
    return PTH.read_bytes()[:size]


@pytest.mark.parametrize('error', [ConnectionResetError('reset by peer'), KeyboardInterrupt()])
def test_interrupted_download_keeps_nothing(local_registry, tmp_path, monkeypatch, error):
  del local_registry
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: _Interrupted(error))
  expected = zoo.ZooError if isinstance(error, OSError) else KeyboardInterrupt
  with pytest.raises(expected):
    zoo.fetch(NAME, tmp_path)
  assert files_under(tmp_path) == []


def test_unknown_name_and_list(capsys):
  with pytest.raises(zoo.ZooError, match="Unknown zoo teacher 'official/cifar100/resnet110'"):
    zoo.resolve('zoo:official/cifar100/resnet110')
  assert zoo.main(['list']) == 0
  out = capsys.readouterr().out
  assert 'torchvision/imagenet/resnet34' in out and 'resnet34-b627a593.pth' in out
  assert zoo.main(['fetch', 'nope', '--dir', '/nonexistent']) == 1
  assert capsys.readouterr().err.startswith("error: Unknown zoo teacher 'nope'")


def test_registry_matches_the_published_records():
  """Official teachers: official_teachers.json (those with a hash); torchvision: the hash
  prefix in each file's name and the V1 top-1 of torchvision's documentation."""
  import json  # pylint: disable=g-import-not-at-top
  official = json.loads((REFERENCE_DIR / 'official_teachers.json').read_text())
  for name, record in official.items():
    if record['sha256'] is None:
      assert name not in zoo.REGISTRY
      continue
    t = zoo.REGISTRY[name]
    assert (t.url, t.arch, t.classes, t.dataset, t.reference_top1, t.sha256, t.max_bytes) == (
        record['url'], record['arch'], record['classes'], record['dataset'],
        record['best_test_top1'], record['sha256'], record['bytes'])
  torchvision = {'resnet18': ('f37072fd', 69.758), 'resnet34': ('b627a593', 73.314),
                 'resnet50': ('0676ba61', 76.130), 'resnet101': ('63fe2227', 77.374)}
  for arch, (prefix, top1) in torchvision.items():
    t = zoo.REGISTRY[f'torchvision/imagenet/{arch}']
    assert t.url == f'https://download.pytorch.org/models/{arch}-{prefix}.pth'
    assert (t.sha256, t.reference_top1, t.classes, t.arch) == (prefix, top1, 1000, arch)


def test_official_cifar10_teacher_a_pickled_module(tmp_path, monkeypatch):
  """The CIFAR-10 release pickles whole modules: its pinned hash and the conversion hold."""
  name = 'official/cifar10/resnet20'
  pth = REFERENCE_DIR / 'torch' / 'cifar10_resnet20_pickled_module.pth'
  monkeypatch.setitem(zoo.REGISTRY, name, dataclasses.replace(zoo.REGISTRY[name], url=pth.as_uri()))
  variables = teachers.read(str(zoo.fetch(name, tmp_path)), 'resnet20', 10)
  assert_same_variables(variables, torch_import.load(str(pth), 'resnet20', 10))
