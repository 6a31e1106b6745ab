"""The official PyTorch implementation's numbers (tests/data/reference), reproduced.

Tolerances are those of tests/data/reference/README.md.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import state_dict_from

from oracle_jax import losses, models, oracle, torch_import


def rel_l2(a, ref):
  return np.linalg.norm(np.asarray(a) - ref) / np.linalg.norm(ref)


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def nets(reference):
  z, c = reference['z'], reference['num_classes']
  teacher = models.create(reference['teacher'], c)
  student = models.create(reference['student'], c)
  t_vars = torch_import.convert_state_dict(state_dict_from(z, 'teacher/'), reference['teacher'], c)
  s_vars = torch_import.convert_state_dict(state_dict_from(z, 'student/'), reference['student'], c)
  teacher_fn = jax.jit(functools.partial(teacher.apply, t_vars, train=False))
  return dict(z=z, teacher=teacher_fn, student=student, s_vars=s_vars,
              x=jnp.asarray(z['x_nhwc']), y=jnp.asarray(z['y']))


def test_preprocessing_is_exact(nets):
  from oracle_jax import data
  z = nets['z']
  spec = data.dataset_spec('cifar100' if z['teacher_logits_x'].shape[1] == 100 else 'cifar10')
  np.testing.assert_array_equal(data.normalize(z['images_uint8'], spec), z['x_nhwc'])
  np.testing.assert_array_equal(z['x_nhwc'], nhwc(z['x_nchw']))


def test_eval_logits(nets):
  z = nets['z']
  np.testing.assert_allclose(nets['teacher'](nets['x']), z['teacher_logits_x'], rtol=1e-4, atol=1e-4)
  s_logits = nets['student'].apply(nets['s_vars'], nets['x'])
  np.testing.assert_allclose(s_logits, z['student_logits_x_eval'], rtol=1e-4, atol=1e-4)
  ce = losses.cross_entropy(nets['teacher'](nets['x']), nets['y'])
  np.testing.assert_allclose(ce, z['teacher_ce_x'], rtol=1e-5, atol=1e-4)


def test_input_gradient(nets):
  z = nets['z']
  grad = jax.grad(lambda x: losses.cross_entropy(nets['teacher'](x), nets['y']))(nets['x'])
  ref = nhwc(z['input_grad_mean_ce'])
  assert rel_l2(grad, ref) <= 5e-3
  np.testing.assert_allclose(grad, ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize('key,gamma,steps,x_atol,logit_check', [
    ('gamma0.2', 0.2, 1, 2e-4, dict(rtol=1e-4, atol=5e-4)),
    ('gamma1.0', 1.0, 1, 1e-3, dict(rtol=1e-4, atol=2e-3)),
    ('gamma0.2_steps2', 0.2, 2, 3e-3, None),
])
def test_oracle_input_and_teacher_logits(nets, key, gamma, steps, x_atol, logit_check):
  z = nets['z']
  x_star = oracle.reinforce(nets['teacher'], nets['x'], nets['y'], gamma=gamma, steps=steps)
  np.testing.assert_allclose(x_star, nhwc(z[f'x_star_{key}']), rtol=0, atol=x_atol)
  logits = nets['teacher'](x_star)
  ref = z[f'teacher_logits_xstar_{key}']
  if logit_check:
    np.testing.assert_allclose(logits, ref, **logit_check)
  else:
    assert rel_l2(logits, ref) <= 1e-3
    np.testing.assert_allclose(logits, ref, rtol=0, atol=5e-2)
  np.testing.assert_allclose(losses.cross_entropy(logits, nets['y']), z[f'teacher_ce_xstar_{key}'],
                             rtol=1e-5, atol=1e-4)


def test_student_train_forward_and_running_stats(nets):
  z = nets['z']
  logits, updates = nets['student'].apply(nets['s_vars'], nets['x'], train=True,
                                          mutable=['batch_stats'])
  np.testing.assert_allclose(logits, z['student_logits_x_train'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(losses.cross_entropy(logits, nets['y']), z['student_ce_x_train'],
                             rtol=1e-5, atol=1e-4)
  after = torch_import.to_state_dict({'batch_stats': updates['batch_stats']})
  ref = state_dict_from(z, 'student_after_train_forward/')
  assert set(after) == set(ref)
  for name, value in ref.items():
    np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_kd_total_loss_and_gradients(nets):
  z, y = nets['z'], nets['y']
  x_star = oracle.reinforce(nets['teacher'], nets['x'], y, gamma=0.2)
  t_logits = nets['teacher'](x_star)

  def total(params, temperature=4.0):
    variables = {'params': params, 'batch_stats': nets['s_vars']['batch_stats']}
    s_logits, _ = nets['student'].apply(variables, nets['x'], train=True, mutable=['batch_stats'])
    kd = losses.kd_loss(s_logits, t_logits, temperature)
    return losses.cross_entropy(s_logits, y) + kd, kd

  (loss, kd4), grads = jax.value_and_grad(total, has_aux=True)(nets['s_vars']['params'])
  np.testing.assert_allclose(kd4, z['kd_loss_T4'], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(total(nets['s_vars']['params'], 1.5)[1], z['kd_loss_T1.5'],
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(loss, z['total_loss_T4_alpha1'], rtol=1e-5, atol=1e-4)
  g = torch_import.to_state_dict({'params': grads})
  for name in ('fc.weight', 'fc.bias'):
    np.testing.assert_allclose(g[name], z[f'grad/{name}'], rtol=1e-4, atol=1e-5)
  for name in ('conv1.weight', 'layer1.0.bn1.weight'):
    assert rel_l2(g[name], z[f'grad/{name}']) <= 1e-2, name
    np.testing.assert_allclose(g[name], z[f'grad/{name}'], rtol=0, atol=5e-3)
