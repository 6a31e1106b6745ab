"""The project's real train step reproduces two official training steps (`sgd2/*`)."""
import functools

import jax
import numpy as np
import pytest
from conftest import state_dict_from

from configs import common
from oracle_jax import data, methods, models, optim, oracle, steps, torch_import


def official_config():
  c = common.base_config()
  c.method, c.oracle.gamma, c.schedule.decay_epochs = 'kd', 1.0, ()
  return c


@pytest.fixture(scope='module')
def two_steps(reference):
  z, classes = reference['z'], reference['num_classes']
  config = official_config()
  spec = data.dataset_spec('cifar100' if classes == 100 else 'cifar10')
  student = models.create(reference['student'], classes)
  teacher = models.create(reference['teacher'], classes)
  t_vars = torch_import.convert_state_dict(state_dict_from(z, 'teacher/'), reference['teacher'], classes)
  s_vars = torch_import.convert_state_dict(state_dict_from(z, 'student/'), reference['student'], classes)
  lr_fn = lambda step: config.optimizer.learning_rate
  state = steps.TrainState.create(s_vars, optim.make_optimizer(config, lr_fn))
  step = jax.jit(functools.partial(steps.train_step, config=config, student=student,
                                   oracle_settings=oracle.Settings.from_config(config.oracle),
                                   teacher=teacher, spec=spec, learning_rate_fn=lr_fn,
                                   distiller=methods.get(config)))
  images, y = z['images_uint8'], z['y']
  batch2 = {'image': images[:, :, ::-1], 'label': np.roll(y, 1)}
  np.testing.assert_array_equal(data.normalize(batch2['image'], spec), z['sgd2/x2_nhwc'])
  np.testing.assert_array_equal(batch2['label'], z['sgd2/y2'])
  state1, m1 = step(state, t_vars, {'image': images, 'label': y}, jax.random.key(0))
  state2, m2 = step(state1, t_vars, batch2, jax.random.key(1))
  as_torch = lambda s: torch_import.to_state_dict(s.variables())
  return dict(z=z, case=reference['case'], losses=(m1['loss'], m2['loss']),
              states=(state_dict_from(z, 'student/'), as_torch(state1), as_torch(state2)),
              metrics=(m1, m2))


def _is_stat(name):
  return name.endswith(('running_mean', 'running_var'))


def test_losses(two_steps):
  z = two_steps['z']
  np.testing.assert_allclose(two_steps['losses'][0], z['sgd2/loss_step1'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(two_steps['losses'][1], z['sgd2/loss_step2'], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k,fc_tol,stat_tol,param_atol,update_frac', [
    (1, dict(rtol=1e-5, atol=1e-6), dict(rtol=1e-5, atol=1e-5), 1e-3, 2e-2),
    (2, dict(rtol=1e-4, atol=1e-4), dict(rtol=2e-4, atol=2e-3), 2e-2, 0.2),
])
def test_state_after_each_step(two_steps, k, fc_tol, stat_tol, param_atol, update_frac):
  z, states = two_steps['z'], two_steps['states']
  ours = states[k]
  prev = state_dict_from(z, 'student/' if k == 1 else 'sgd2/after1/')
  ref = state_dict_from(z, f'sgd2/after{k}/')
  assert set(ours) == set(ref)
  for name, value in ref.items():
    if name.startswith('fc.'):
      np.testing.assert_allclose(ours[name], value, err_msg=name, **fc_tol)
    elif _is_stat(name):
      np.testing.assert_allclose(ours[name], value, err_msg=name, **stat_tol)
    else:
      np.testing.assert_allclose(ours[name], value, rtol=0, atol=param_atol, err_msg=name)
      update = np.linalg.norm(value - prev[name])
      assert np.linalg.norm(ours[name] - value) <= update_frac * update, name


def test_weight_decay_on_every_parameter_exactly(two_steps):
  """The dead stem channel of the CIFAR-100 student moves by weight decay alone."""
  if two_steps['case'] != 'cifar100_r32_r20':
    np.testing.assert_allclose(two_steps['states'][1]['fc.bias'], two_steps['z']['sgd2/after1/fc.bias'],
                               rtol=1e-6, atol=0)
    return
  z, (_, s1, s2) = two_steps['z'], two_steps['states']
  for name in ('bn1.weight', 'bn1.bias'):
    np.testing.assert_allclose(s1[name][2], z[f'sgd2/after1/{name}'][2], rtol=1e-6, atol=0)
    np.testing.assert_allclose(s2[name][2], z[f'sgd2/after2/{name}'][2], rtol=1e-6, atol=0)


def test_metrics_of_the_step(two_steps):
  m1, _ = two_steps['metrics']
  assert set(m1) >= {'loss', 'ce', 'kd', 'accuracy', 'teacher_accuracy', 'oracle_accuracy',
                     'grad_norm', 'learning_rate'}
  np.testing.assert_allclose(m1['loss'], m1['ce'] + m1['kd'], rtol=1e-6)
  assert float(m1['learning_rate']) == pytest.approx(0.05)
  # The oracle makes the teacher at least as right on its own batch.
  assert float(m1['oracle_accuracy']) >= float(m1['teacher_accuracy'])
