"""The configs: pure data (no library import), one argument format, and every shipped one
runs end to end (a couple of steps, tiny batches) on mock TFDS data."""
import ast
import importlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from test_data import _fake_tiny_imagenet

from configs import common
from oracle_jax import checkpoints, data, models, train, validation, zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')
SHIPPED = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                 if f.endswith('.py') and f not in ('__init__.py', 'common.py', 'default.py',
                                                    'published.py'))


def test_configs_import_only_ml_collections_and_each_other():
  for name in os.listdir(CONFIG_DIR):
    if name.endswith('.py'):
      tree = ast.parse(open(os.path.join(CONFIG_DIR, name), encoding='utf-8').read())
      imported = {alias.name.split('.')[0] for node in ast.walk(tree)
                  if isinstance(node, ast.Import) for alias in node.names}
      imported |= {node.module.split('.')[0] for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom)}
      assert imported <= {'ml_collections', 'configs'}, (name, imported)


def test_parse_arg_takes_values_in_order_or_by_key():
  parse = lambda arg: common.parse_arg(arg, teacher='resnet56', student='resnet20', steps=3,
                                       oracle=True).to_dict()
  assert parse(None) == dict(teacher='resnet56', student='resnet20', steps=3, oracle=True)
  assert parse('a,b,5') == dict(teacher='a', student='b', steps=5, oracle=True)
  assert parse('steps=7,a,oracle=false') == dict(teacher='a', student='resnet20', steps=7,
                                                  oracle=False)
  for bad, message in [('a,b,1,true,x', "'a,b,1,true,x' has too many values"),
                       ('a,teacher=b', "has 'teacher' twice"), ('gamma=1', "has no key 'gamma'"),
                       ('steps=x', "steps='x' must be of type int"),
                       ('oracle=1', "oracle='1' must be true or false")]:
    with pytest.raises(common.ArgumentError, match=message):
      parse(bad)
  with pytest.raises(common.ArgumentError, match='this config takes no argument'):
    common.parse_arg('x')


def test_the_paper_pairs_need_no_files():
  from configs import cifar  # pylint: disable=g-import-not-at-top
  c = cifar.get_config('resnet110,resnet32')
  assert (c.dataset, c.teacher.model, c.student.model) == ('cifar100', 'resnet110', 'resnet32')
  assert cifar.get_config('resnet56,resnet20,cifar10').teacher.checkpoint == \
      'zoo:official/cifar10/resnet56'
  assert c.teacher.checkpoint == 'teacher_models/CIFAR100/resnet110/model.pth'  # not in the zoo
  assert cifar.get_config('teacher=resnet56,student=resnet32').student.model == 'resnet32'
  for bad, message in [('resnet56,resnet20,cifar10,kd,oracle,x', 'has too many values'),
                       ('resnet56,resnet20,recipe=mine', "recipe must be one of"),
                       ('resnet56,resnet20,gamma=1', "has no key 'gamma'"),
                       ('resnet56,resnet20,method=crd,recipe=published', 'exists for CIFAR-100 '
                        'and methods kd, fitnet, at, dkd, sad only')]:
    with pytest.raises(common.ArgumentError, match=message):
      cifar.get_config(bad)
  # Values the library knows are the library's to check, in one sentence.
  for arg, message in [('resnet56,resnet20,method=crd', "Unknown method 'crd'"),
                       ('resnet56,resnet20,svhn', "'svhn'"), ('resnet56,resnet2', "'resnet2'")]:
    with pytest.raises(validation.ConfigError, match=message):
      validation.validate_config(cifar.get_config(arg))


def test_the_official_teachers_come_from_the_zoo_where_it_holds_them():
  from configs import cifar  # pylint: disable=g-import-not-at-top
  for dataset in ('cifar10', 'cifar100'):
    for teacher in ('resnet20', 'resnet32', 'resnet56', 'resnet110'):
      in_zoo = f'official/{dataset}/{teacher}' in zoo.REGISTRY
      assert (teacher in cifar.ZOO_TEACHERS) == in_zoo
      checkpoint = cifar.get_config(f'{teacher},resnet20,{dataset}').teacher.checkpoint
      assert checkpoint.startswith(zoo.PREFIX) == in_zoo


@pytest.mark.parametrize('arg,message', [
    ('cifar.py:resnet56,resnet20,gamma=1', "has no key 'gamma'"),
    ('cifar.py:resnet56,resnet20,cifar10,method=dkd,recipe=published', 'exists for CIFAR-100'),
    ('cifar_teacher.py:resnet56,cifar10,x', 'has too many values'),
    ('cifar100_r56_r20.py:resnet56', 'this config takes no argument'),
])
def test_a_bad_config_argument_is_one_line(arg, message, tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'main.py'),
                         f'--config={CONFIG_DIR}/{arg}', f'--workdir={tmp_path / "w"}'],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith('error: ') and message in line
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('script', ['main.py', 'demo.py', 'sweep.py', 'analyze.py'])
def test_help_answers_without_importing_jax(script):
  """--help loads the default config (main.py, demo.py) but nothing of JAX or Flax."""
  program = ('import runpy, sys\n'
             'sys.argv = sys.argv[1:]\n'
             'try:\n'
             '  runpy.run_path(sys.argv[0], run_name="__main__")\n'
             'except SystemExit:  # absl exits after the help\n'
             '  print(sorted(m for m in ("jax", "flax", "optax") if m in sys.modules))\n')
  proc = subprocess.run([sys.executable, '-c', program, os.path.join(REPO, 'launch', script),
                         '--help'], capture_output=True, text=True, timeout=120)
  assert proc.stdout.strip().splitlines()[-1] == '[]', proc.stderr[-2000:]
  assert '--config' in proc.stdout


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
  assert imagenet_r34_r18.get_config('method=dkd').to_dict() == \
      imagenet_r34_r18.get_config('dkd').to_dict()


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
      plan = train.plan(config, run)  # it counts the eval split: inside the mock
    assert plan['student_params'] == 21_797_672  # torchvision's count
    return
  if config.dataset == 'tiny_imagenet':  # the project's own builder: a miniature zip
    _fake_tiny_imagenet(config.data_dir)
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  else:
    with tfds.testing.mock_data(num_examples=8):
      results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 2 and np.isfinite(results['final_train_loss'])
  assert 0 <= results['final_top1'] <= 1
