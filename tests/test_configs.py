"""Every shipped config runs end to end (a couple of steps, tiny batches) on mock TFDS data."""
import importlib
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from test_data import _fake_tiny_imagenet

from oracle_jax import checkpoints, data, models, train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
SHIPPED = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                 if f.endswith('.py') and f not in ('__init__.py', 'common.py', 'default.py',
                                                    'published.py'))


def test_the_paper_pairs_need_no_files():
  from configs import cifar  # pylint: disable=g-import-not-at-top
  c = cifar.get_config('resnet110,resnet32')
  assert (c.dataset, c.teacher.model, c.student.model) == ('cifar100', 'resnet110', 'resnet32')
  assert cifar.get_config('resnet56,resnet20,cifar10').teacher.checkpoint == \
      'zoo:official/cifar10/resnet56'
  assert c.teacher.checkpoint == 'teacher_models/CIFAR100/resnet110/model.pth'  # not in the zoo
  for bad in ('resnet56', 'resnet56,resnet20,cifar10,x', 'resnet56,resnet20,recipe=mine',
              'resnet56,resnet20,method=crd', 'resnet56,resnet20,svhn'):
    with pytest.raises(ValueError, match='takes "teacher,student'):
      cifar.get_config(bad)


def test_official_recipe_defaults():
  from configs import cifar10_r56_r20, cifar100_r56_r20, imagenet_r34_r18  # pylint: disable=g-import-not-at-top
  c = cifar10_r56_r20.get_config()
  assert (c.optimizer.learning_rate, c.optimizer.momentum, c.optimizer.weight_decay) == (0.05, 0.9, 2.5e-4)
  assert (c.batch_size, c.num_epochs, tuple(c.schedule.decay_epochs)) == (64, 240, (150, 180, 210))
  assert (c.temperature, c.alpha, c.ce_weight, c.oracle.gamma) == (4.0, 1.0, 1.0, 1.0)
  c = cifar100_r56_r20.get_config()  # the released student's run (tests/test_recipes.py)
  assert (c.temperature, c.alpha, c.ce_weight, c.oracle.gamma, c.reference_top1) == \
      (2.0, 1.0, 0.5, 0.5, 71.54)
  c = imagenet_r34_r18.get_config()
  assert (c.optimizer.learning_rate, c.batch_size, c.optimizer.weight_decay) == (0.2, 512, 1e-4)
  assert (c.num_epochs, tuple(c.schedule.decay_epochs)) == (100, (30, 60, 90))
  assert (c.temperature, c.ce_weight, c.alpha) == (1.0, 0.5, 0.5)


def test_per_pair_dkd_recipes():
  """mdistiller's DKD settings where it tuned them, its defaults elsewhere."""
  from configs import cifar, imagenet_r34_r18  # pylint: disable=g-import-not-at-top
  beta = lambda arg: cifar.get_config(arg).distill.dkd_beta
  assert beta('resnet56,resnet20') == beta('resnet110,resnet32') == 2.0
  assert beta('wrn_40_2,wrn_16_2') == beta('wrn_40_2,wrn_40_1') == 6.0
  assert beta('resnet32x4,resnet8x4') == beta('resnet56,resnet20,cifar10') == 8.0
  c = imagenet_r34_r18.get_config('dkd')
  assert (c.method, c.ce_weight, c.distill.dkd_alpha, c.distill.dkd_beta) == ('dkd', 1.0, 1.0, 0.5)
  assert (c.distill.dkd_temperature, c.distill.dkd_warmup_epochs) == (1.0, 1.0)
  assert (c.batch_size, c.optimizer.learning_rate) == (512, 0.2)  # the same optimizer
  c = imagenet_r34_r18.get_config('at')
  assert (c.method, c.ce_weight, c.distill.dkd_beta) == ('at', 1.0, 8.0)


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_config_runs(name, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config()
  config.data_dir = str(tmp_path / 'tfds')
  config.train_steps, config.batch_size, config.eval_batch_size = 2, 8, 8
  config.log_every_steps = config.checkpoint_every_steps = 1
  spec = data.dataset_spec(config.dataset)
  if config.method != 'scratch':  # a random teacher of the configured architecture
    kwargs = {'small_stem': True} if config.teacher.small_stem else {}
    teacher = models.create(config.teacher.model, spec.num_classes, **kwargs)
    variables = jax.jit(teacher.init)(jax.random.key(0), np.zeros((1, *spec.image_shape), np.float32))
    config.teacher.checkpoint = str(tmp_path / 'teacher')
    checkpoints.save_model(config.teacher.checkpoint, variables, model=config.teacher.model,
                           num_classes=spec.num_classes, **kwargs)
  if name == 'imagenet_r34_r34':
    # Same pipeline and teacher as imagenet_r34_r18 (which trains below); compiling a
    # second 224-pixel ResNet-34 step costs ~1.5 minutes of CI, so check its plan only.
    with tfds.testing.mock_data(num_examples=8):
      run, _ = train.prepare(config)
    assert train.plan(config, run)['student_params'] == 21_797_672  # torchvision's count
    return
  if config.dataset == 'tiny_imagenet':  # the project's own builder: a miniature zip
    _fake_tiny_imagenet(config.data_dir)
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  else:
    with tfds.testing.mock_data(num_examples=8):
      results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 2 and np.isfinite(results['final_train_loss'])
  assert 0 <= results['final_top1'] <= 1
