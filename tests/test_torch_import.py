"""Reading real .pth files and converting PyTorch names/layouts to Flax."""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REFERENCE_DIR, state_dict_from

from oracle_jax import models, torch_import

TORCH_DIR = REFERENCE_DIR / 'torch'


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('filename,npz,prefix,model,classes', [
    ('cifar100_resnet32_state_dict.pth', 'cifar100_r32_r20', 'teacher/', 'resnet32', 100),
    ('cifar100_resnet20_state_dict.pth', 'cifar100_r32_r20', 'student/', 'resnet20', 100),
    ('cifar10_resnet20_pickled_module.pth', 'cifar10_r20_r20', 'teacher/', 'resnet20', 10),
])
def test_pth_gives_the_npz_variables(filename, npz, prefix, model, classes):
  z = np.load(REFERENCE_DIR / f'{npz}.npz')
  from_pth = torch_import.load(str(TORCH_DIR / filename), model, classes)
  from_npz = torch_import.convert_state_dict(state_dict_from(z, prefix), model, classes)
  assert_trees_equal(from_pth, from_npz)


@pytest.mark.parametrize('filename', ['cifar100_resnet20_state_dict.pth',
                                      'cifar10_resnet20_pickled_module.pth'])
def test_torch_free_reader_equals_torch_load(filename, monkeypatch):
  import torch  # pylint: disable=g-import-not-at-top  (CI installs it: .ci/run)
  # torch.load of a pickled module needs its classes importable: stand in for the
  # official repository's `models.resnet`.
  resnet = types.ModuleType('models.resnet')
  resnet.ResNet = type('ResNet', (torch.nn.Module,), {})
  resnet.BasicBlock = type('BasicBlock', (torch.nn.Module,), {})
  monkeypatch.setitem(sys.modules, 'models', types.ModuleType('models'))
  monkeypatch.setitem(sys.modules, 'models.resnet', resnet)
  path = str(TORCH_DIR / filename)
  ours = torch_import.read_state_dict(path)
  obj = torch.load(path, map_location='cpu', weights_only='state_dict' in filename)
  theirs = obj if isinstance(obj, dict) else obj.state_dict()
  assert set(ours) == set(theirs)
  for name, tensor in theirs.items():
    np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_wrapped_and_dataparallel_state_dicts(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  z = np.load(REFERENCE_DIR / 'cifar100_r32_r20.npz')
  sd = state_dict_from(z, 'student/')
  expected = torch_import.convert_state_dict(sd, 'resnet20', 100)
  wrapped = {'epoch': 3, 'model': {f'module.{k}': torch.from_numpy(v) for k, v in sd.items()}}
  torch.save(wrapped, tmp_path / 'wrapped.pth')
  assert_trees_equal(torch_import.load(str(tmp_path / 'wrapped.pth'), 'resnet20', 100), expected)
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in sd.items()}},
             tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  assert_trees_equal(torch_import.load(str(tmp_path / 'legacy.pth'), 'resnet20', 100), expected)


@pytest.mark.parametrize('name', models.NAMES)
def test_round_trip_through_torch_names(name):
  """Random variables → PyTorch names/layouts → convert_state_dict gives them back."""
  classes = 1000 if name in models.IMAGENET_MODELS else 100
  model = models.create(name, classes)
  shapes = jax.eval_shape(model.init, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  state_dict = torch_import.to_state_dict(variables)
  assert all(len(v.shape) != 4 or v.shape[2] == v.shape[3] for v in state_dict.values())
  assert_trees_equal(torch_import.convert_state_dict(state_dict, name, classes), variables)


def _sd(name='resnet20'):
  z = np.load(REFERENCE_DIR / 'cifar100_r32_r20.npz')
  return state_dict_from(z, 'student/' if name == 'resnet20' else 'teacher/')


def test_missing_key_is_named():
  sd = _sd()
  del sd['layer2.0.downsample.0.weight']
  with pytest.raises(torch_import.CheckpointMismatchError,
                     match=r"1 missing key\(s\), first 'layer2.0.downsample.0.weight'"):
    torch_import.convert_state_dict(sd, 'resnet20', 100)


def test_unexpected_key_is_named():
  sd = _sd()
  sd['extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(torch_import.CheckpointMismatchError,
                     match=r"1 unexpected key\(s\), first 'extra.weight'"):
    torch_import.convert_state_dict(sd, 'resnet20', 100)


def test_wrong_architecture_names_first_mismatch():
  with pytest.raises(torch_import.CheckpointMismatchError, match=r'missing key.*layer1.3'):
    torch_import.convert_state_dict(_sd('resnet20'), 'resnet32', 100)
  sd = _sd()
  sd['layer3.1.conv2.weight'] = np.zeros((64, 32, 3, 3), np.float32)
  with pytest.raises(torch_import.CheckpointMismatchError,
                     match=r"Shape mismatch for 'layer3.1.conv2.weight' in a resnet20 checkpoint: "
                           r'expected \(64, 64, 3, 3\), found \(64, 32, 3, 3\)'):
    torch_import.convert_state_dict(sd, 'resnet20', 100)


def test_class_count_mismatch():
  with pytest.raises(torch_import.CheckpointMismatchError,
                     match=r'checkpoint has 100 classes .* num_classes=10'):
    torch_import.convert_state_dict(_sd(), 'resnet20', 10)


def test_not_a_checkpoint(tmp_path):
  text = tmp_path / 'notes.pth'
  text.write_text('hello')
  with pytest.raises(ValueError, match='is not a PyTorch checkpoint'):
    torch_import.load(str(text), 'resnet20', 100)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    torch_import.load(str(tmp_path / 'absent.pth'), 'resnet20', 100)
  import zipfile
  with zipfile.ZipFile(tmp_path / 'other.pth', 'w') as f:
    f.writestr('readme.txt', 'x')
  with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
    torch_import.load(str(tmp_path / 'other.pth'), 'resnet20', 100)
