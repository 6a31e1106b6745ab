"""Teachers from a config: the architecture options (small_stem) reach the model, the
shape check and the checkpoint's meta through `models.architecture` alone."""
import jax
import numpy as np
import pytest

from configs import tiny_imagenet_r18_r18
from oracle_jax import checkpoints, data, models, teachers, torch_import

SPEC = data.dataset_spec('tiny_imagenet')


def _numbered_variables(**architecture):
  """resnet18 variables, each array filled with its own index (so a mix-up shows)."""
  shapes = models.abstract_variables('resnet18', SPEC.num_classes, **architecture)
  leaves, treedef = jax.tree.flatten(shapes)
  return jax.tree.unflatten(treedef, [np.full(s.shape, i, np.float32)
                                      for i, s in enumerate(leaves)])


def _config(checkpoint, small_stem=True):
  config = tiny_imagenet_r18_r18.get_config()
  config.teacher.checkpoint = str(checkpoint)
  config.teacher.small_stem = small_stem
  return config


def test_architecture_is_small_stem_only_when_set():
  assert models.architecture({'small_stem': True}) == {'small_stem': True}
  assert models.architecture({'small_stem': False}) == {} == models.architecture({})


def test_small_stem_teacher_loads_from_orbax(tmp_path):
  saved = _numbered_variables(small_stem=True)
  checkpoints.save_model(tmp_path / 'teacher', saved, model='resnet18',
                         num_classes=SPEC.num_classes, small_stem=True)
  model, variables = teachers.load(_config(tmp_path), SPEC)  # a workdir: its teacher/
  assert model.small_stem and variables['params']['conv1']['kernel'].shape == (3, 3, 3, 64)
  jax.tree.map(np.testing.assert_array_equal, variables, saved)
  with pytest.raises(checkpoints.TeacherCheckpointError,
                     match=r"layer \['params'\]\['conv1'\]\['kernel'\] has shape "
                           r'\(3, 3, 3, 64\) in the checkpoint but the model expects '
                           r'\(7, 7, 3, 64\)'):
    teachers.load_variables(_config(tmp_path, small_stem=False), SPEC)


def test_convert_file_records_the_architecture(tmp_path):
  torch = pytest.importorskip('torch')
  saved = _numbered_variables(small_stem=True)
  pth = tmp_path / 'teacher.pth'
  torch.save({k: torch.from_numpy(v)
              for k, v in torch_import.to_state_dict(saved).items()}, str(pth))
  torch_import.convert_file(str(pth), tmp_path / 'out', 'resnet18', SPEC.num_classes,
                            models.architecture({'small_stem': True}), source='test')
  variables, meta = checkpoints.load_model(tmp_path / 'out')
  assert meta == {'model': 'resnet18', 'num_classes': 200, 'small_stem': True,
                  'source': 'test', 'step': 0}
  jax.tree.map(np.testing.assert_array_equal, variables, saved)
  jax.tree.map(np.testing.assert_array_equal, teachers.load_variables(_config(pth), SPEC), saved)
