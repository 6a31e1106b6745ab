"""The recipes: the 16 released CIFAR-100 students' runs, the baselines as their authors ran
them, and two training steps of each on mock CIFAR-100."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REFERENCE_DIR
from configs import cifar
from configs import common
from oracle_jax import checkpoints, methods, models, train

RELEASED = json.loads((REFERENCE_DIR / 'released_students.json').read_text())


def test_the_16_released_students_are_their_runs():
  """Every key of the released logs (tests/data/reference/released_students.json) that a
  config holds, exactly; `reference_top1` is the run's best top-1."""
  assert len(RELEASED) == 16 and len(cifar.RELEASED) == 16
  for run in RELEASED.values():
    c = cifar.get_config(f'{run["teacher"]},{run["student"]}')
    assert (c.dataset, c.method, c.teacher.model, c.student.model) == (
        'cifar100', 'kd', run['teacher'], run['student'])
    assert (c.oracle.enabled, c.oracle.gamma, c.oracle.steps, c.oracle.reference_batch_size) == (
        True, run['gamma'], 1, run['batch_size'])
    assert (c.temperature, c.alpha, c.ce_weight) == (
        run['temperature'], run['alpha'], run['ce_weight'])
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum,
            c.optimizer.nesterov, c.optimizer.weight_decay, c.optimizer.base_batch_size) == (
                'sgd', run['lr'], run['momentum'], False, run['weight_decay'], 0)
    assert (c.batch_size, c.num_epochs, c.train_steps) == (run['batch_size'], run['epochs'], 0)
    assert (c.schedule.name, list(c.schedule.decay_epochs), c.schedule.decay_factor,
            c.schedule.warmup_epochs) == ('step', run['schedule'], run['lr_decay'], 0)
    assert c.reference_top1 == run['best_top1']
    assert c.teacher.checkpoint in (f'zoo:official/cifar100/{run["teacher"]}',
                                    f'teacher_models/CIFAR100/{run["teacher"]}/model.pth')


def test_other_pairs_and_cifar10_keep_the_official_defaults():
  for arg in ('resnet8,resnet8', 'resnet32x4,resnet8x4', 'resnet56,resnet20,cifar10'):
    c = cifar.get_config(arg)
    assert (c.temperature, c.alpha, c.ce_weight, c.oracle.gamma, c.reference_top1) == (
        4.0, 1.0, 1.0, 1.0, 0.0)
    assert c.optimizer.weight_decay == 2.5e-4
  # Other methods under the oracle recipe: their defaults, the released pair's γ.
  c = cifar.get_config('resnet56,resnet20,method=at')
  assert (c.method, c.ce_weight, c.temperature, c.oracle.gamma, c.reference_top1) == (
      'at', 1.0, 4.0, 0.5, 0.0)


# The published CIFAR-100 recipes, as their sources state them.
# mdistiller @ e8c5bb3, configs/cifar100/{kd,fitnet,at}.yaml and dkd/*.yaml, SOLVER section:
MDISTILLER_SOLVER = dict(batch_size=64, epochs=240, lr=0.05, stages=[150, 180, 210], rate=0.1,
                         weight_decay=0.0005, momentum=0.9)
# clovaai/attention-feature-distillation @ 42a3077, main.py argparse defaults:
AFD_SOLVER = dict(batch_size=64, epochs=240, lr=0.05, stages=[150, 180, 210], rate=0.1,
                  weight_decay=5e-4, momentum=0.9)
# (config key path, value) per method. mdistiller/engine/cfg.py (@ a08d46f): CFG.KD
# (TEMPERATURE 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9), CFG.FITNET (HINT_LAYER 2, CE 1,
# FEAT_WEIGHT 100), CFG.AT (P 2, CE 1, FEAT_WEIGHT 1000), CFG.DKD (CE 1, ALPHA 1, BETA 8,
# T 4, WARMUP 20; dkd/res56_res20.yaml and res110_res32.yaml BETA 2). AFD main.py: --alpha
# 0.9, --temperature 4, --beta 200, --qk_dim 128, CE weight 1 (utils.train_kl); every
# residual block (utils.py LAYER).
PUBLISHED = {
    'kd': dict(ce_weight=0.1, alpha=0.9, temperature=4.0),
    'fitnet': {'ce_weight': 1.0, 'distill.fitnet_stage': 'stage2', 'distill.fitnet_weight': 100.0},
    'at': {'ce_weight': 1.0, 'distill.at_p': 2.0, 'distill.at_beta': 1000.0},
    'dkd': {'ce_weight': 1.0, 'distill.dkd_alpha': 1.0, 'distill.dkd_beta': 8.0,
            'distill.dkd_temperature': 4.0, 'distill.dkd_warmup_epochs': 20.0},
    'sad': {'ce_weight': 1.0, 'distill.sad_kd_weight': 0.9, 'temperature': 4.0,
            'distill.sad_beta': 200.0, 'distill.sad_qk_dim': 128, 'distill.sad_features': 'blocks'},
}
DKD_TUNED_BETA = {'resnet56,resnet20': 2.0, 'resnet110,resnet32': 2.0}


def _get(c, dotted):
  for key in dotted.split('.'):
    c = c[key]
  return c


@pytest.mark.parametrize('method', sorted(PUBLISHED))
def test_published_recipes_are_their_sources(method):
  solver = AFD_SOLVER if method == 'sad' else MDISTILLER_SOLVER
  gammas = {'resnet56,resnet32': 0.2, 'resnet56,resnet20': 0.5, 'resnet110,resnet32': 0.5,
            'resnet8,resnet8': 1.0}  # released γ; the default for other pairs
  for pair, gamma in gammas.items():
    c = cifar.get_config(f'{pair},method={method},recipe=published')
    assert (c.method, c.oracle.enabled, c.reference_top1) == (method, False, 0.0)
    assert (c.batch_size, c.num_epochs, list(c.schedule.decay_epochs), c.schedule.decay_factor) \
        == (solver['batch_size'], solver['epochs'], solver['stages'], solver['rate'])
    assert (c.optimizer.learning_rate, c.optimizer.momentum, c.optimizer.weight_decay) == (
        solver['lr'], solver['momentum'], solver['weight_decay'])
    want = dict(PUBLISHED[method])
    if method == 'dkd':
      want['distill.dkd_beta'] = DKD_TUNED_BETA.get(pair, 8.0)
    assert {k: _get(c, k) for k in want} == want
    assert c.oracle.gamma == gamma  # for --config.oracle.enabled=True on top
  with pytest.raises(common.ArgumentError, match='recipe=published exists for CIFAR-100'):
    cifar.get_config(f'resnet56,resnet20,cifar10,method={method},recipe=published')


def test_sad_distils_every_residual_block_as_the_official_code():
  """The official LAYER lists: resnet20 9 blocks, resnet56 27, resnet110 every second (27)."""
  c = cifar.get_config('resnet110,resnet56,method=sad,recipe=published')
  sad = methods.get(c)
  assert (sad.features, sad.teacher_block_step, sad.student_block_step) == ('blocks', 2, 1)
  blocks = {'blocks': tuple(np.full((1, 1, 1, 1), i, np.float32) for i in range(1, 55))}
  assert [int(f[0, 0, 0, 0]) for f in sad._select(blocks, 2)] == list(range(2, 55, 2))
  # resnet20 ← resnet56 traced: one key per student block, one query per teacher block.
  c = cifar.get_config('resnet56,resnet20,method=sad,recipe=published')
  x = np.zeros((1, 32, 32, 3), np.float32)
  def features(name):
    model = models.create(name, 100)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.eval_shape(lambda v: model.apply(v, x, return_features=True)[1], variables)
  params = jax.eval_shape(lambda: methods.get(c).init_modules(
      jax.random.key(0), features('resnet20'), features('resnet56')))
  assert (params['p_s'].shape, params['p_t'].shape) == ((9, 128), (27, 128))


@pytest.fixture(scope='module', name='teacher_dir')
def _teacher_dir(tmp_path_factory):
  """A random resnet8 CIFAR-100 teacher: the runs below check the recipes' wiring."""
  model = models.create('resnet8', 100)
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  directory = tmp_path_factory.mktemp('teacher') / 'resnet8'
  checkpoints.save_model(directory, variables, model='resnet8', num_classes=100)
  return str(directory)


# One run (one compilation) per method: the oracle recipe's KD on a released pair, and the
# other baselines as published, two of them with the oracle on top. (Published KD differs
# from the first only in its numbers, checked above.)
RUNS = [('resnet56,resnet20', True),
        ('resnet56,resnet20,method=fitnet,recipe=published', False),
        ('resnet56,resnet20,method=at,recipe=published', False),
        ('resnet56,resnet20,method=dkd,recipe=published', True),
        ('resnet56,resnet20,method=sad,recipe=published', True)]


@pytest.mark.parametrize('arg,oracle', RUNS)
def test_two_steps_of_each_recipe(arg, oracle, teacher_dir, tmp_path):
  config = cifar.get_config(arg)
  config.teacher.model = config.student.model = 'resnet8'  # the smallest pair
  config.teacher.checkpoint = teacher_dir
  config.oracle.enabled = oracle
  config.data_dir = str(tmp_path / 'tfds')
  config.train_steps, config.batch_size, config.eval_batch_size = 2, 8, 8
  config.log_every_steps = config.checkpoint_every_steps = 2
  with tfds.testing.mock_data(num_examples=8):
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 2 and np.isfinite(results['final_train_loss'])
  assert (results['method'], results['oracle']) == (config.method, config.oracle.enabled)
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  if config.reference_top1:  # the released student's figure, next to ours
    assert (saved['reference_top1'], config.reference_top1) == (71.54, 71.54)
    assert saved['delta_top1'] == round(100 * saved['best_top1'] - 71.54, 2)
  else:
    assert 'reference_top1' not in saved and 'delta_top1' not in saved


def test_sweep_table_shows_the_released_figure():
  from oracle_jax import sweep  # pylint: disable=g-import-not-at-top
  runs = [dict(final_top1=0.70, best_top1=0.71, reference_top1=71.54),
          dict(final_top1=0.72, best_top1=0.73, reference_top1=71.54)]
  rows = sweep.summarize({'oracle_kd': runs}, 'kd')
  assert rows['oracle_kd']['best_minus_reference'] == pytest.approx(72.0 - 71.54)
  assert sweep.markdown(rows, 'kd').splitlines()[2].endswith('| 71.54 | +0.46 |')
  csv_lines = sweep.to_csv(rows).splitlines()
  assert csv_lines[0].endswith(',reference_top1,best_minus_reference')
  assert csv_lines[1].startswith('oracle_kd,2,71.0') and ',,,71.54,0.4599' in csv_lines[1]
