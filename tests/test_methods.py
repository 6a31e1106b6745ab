"""Every method × oracle trains; feature distillers get the teacher's features on x*."""
import functools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import digits_config

from configs import common
from oracle_jax import data, methods, models, oracle, parallel, steps, train


def test_teacher_features_come_from_x_star():
  config = common.base_config()
  teacher = models.create('resnet8', 10)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  labels = jax.numpy.arange(8) % 10
  variables = teacher.init(jax.random.key(1), x)
  logits, feats, metrics = steps.teacher_signal(oracle.Settings.from_config(config.oracle),
                                                teacher, variables, x, labels, True)
  logits_fn = functools.partial(teacher.apply, variables, train=False)
  x_star = oracle.reinforce(logits_fn, x, labels, gamma=config.oracle.gamma)
  want_logits, want_feats = teacher.apply(variables, x_star, return_features=True)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-6, atol=1e-6)
  for name in ('stage1', 'stage2', 'stage3'):
    np.testing.assert_allclose(feats[name], want_feats[name], rtol=1e-6, atol=1e-6)
    assert not np.allclose(feats[name], teacher.apply(variables, x, return_features=True)[1][name])
  assert set(metrics) == {'teacher_accuracy', 'oracle_accuracy'}


def _steps(config, mesh, batches, teacher_variables):
  """Runs the real jitted step of `config` on `batches`; returns losses and final state."""
  run = train.Run(config, mesh)
  state = parallel.replicate(run.init_state(config.seed), mesh)
  step, _ = run.jitted(state)
  teacher_variables = parallel.replicate(teacher_variables, mesh)
  out = []
  for i, batch in enumerate(batches):
    state, metrics = step(state, teacher_variables, parallel.global_batch(batch, mesh),
                          jax.random.key(i))
    out.append(jax.device_get(metrics))
  return out, jax.device_get(state)


@pytest.fixture(scope='module')
def digits(digits_data_dir):
  data_dir = digits_data_dir
  spec = data.dataset_spec('digits')
  it = data.train_iterator(spec, data_dir=str(data_dir), global_batch_size=16, seed=0)
  batches = [next(it) for _ in range(2)]
  teacher = models.create('resnet8', 10)
  variables = teacher.init(jax.random.key(7), np.zeros((1, 8, 8, 1), np.float32))
  return str(data_dir), batches, variables


@pytest.mark.parametrize('oracle_on', [False, True])
@pytest.mark.parametrize('method', methods.METHODS)
def test_every_method_trains_on_digits_eight_devices(digits, method, oracle_on):
  data_dir, batches, teacher_variables = digits
  config = digits_config(data_dir, method=method, **{'oracle.enabled': oracle_on,
                                                     'teacher.model': 'resnet8'})
  metrics, state = _steps(config, parallel.make_mesh(), batches, teacher_variables)
  if oracle_on and method in ('fitnet', 'at', 'sad'):
    # The same steps on one device: the sharded feature losses change nothing.
    one, s1 = _steps(config, parallel.make_mesh(jax.devices()[:1]), batches, teacher_variables)
    for a, b in zip(one, metrics):
      np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 s1.trainable(), state.trainable())
  for m in metrics:
    assert np.isfinite(m['loss']) and m['loss'] > m['ce'] * config.ce_weight - 1e-6
    assert ('oracle_accuracy' in m) == oracle_on
  has_modules = method in ('fitnet', 'sad')
  assert bool(jax.tree.leaves(state.distiller_params)) == has_modules
  if has_modules:  # the distiller's own modules are trained with the student
    initial = train.Run(config, parallel.make_mesh()).init_state(config.seed).distiller_params
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.distiller_params, initial)
    assert any(jax.tree.leaves(moved))


@pytest.mark.parametrize('method', methods.METHODS)
def test_every_method_with_oracle_on_mock_cifar100(method, tmp_path):
  config = common.base_config()
  config.update(dict(method=method, data_dir=str(tmp_path), batch_size=8, eval_batch_size=8))
  config.teacher.model, config.student.model = 'resnet8', 'resnet8'
  spec = data.dataset_spec('cifar100')
  with tfds.testing.mock_data(num_examples=16):
    it = data.train_iterator(spec, data_dir=str(tmp_path), global_batch_size=8, seed=0)
    batches = [next(it)]
    teacher = models.create('resnet8', 100)
    variables = teacher.init(jax.random.key(3), np.zeros((1, 32, 32, 3), np.float32))
    metrics, _ = _steps(config, parallel.make_mesh(jax.devices()[:1]), batches, variables)
  assert all(np.isfinite(m['loss']) and 'oracle_accuracy' in m for m in metrics)
