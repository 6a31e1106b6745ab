"""The CPU-fast convolution equals `lax.conv_general_dilated`: values and gradients."""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import REFERENCE_DIR, state_dict_from

from configs import common
from oracle_jax import conv, data, methods, models, optim, oracle, parallel, steps
from oracle_jax import patch_conv, torch_import

NHWC = ('NHWC', 'HWIO', 'NHWC')  # what flax.linen.Conv passes (as ConvDimensionNumbers)
CASES = {  # name: (kernel, stride, padding) as the models use them (PyTorch padding)
    '3x3_s1': (3, 1, ((1, 1), (1, 1))),
    '3x3_s2': (3, 2, ((1, 1), (1, 1))),
    '1x1_s2': (1, 2, ((0, 0), (0, 0))),
}


def _operands(batch, kernel, c_in=5, c_out=6, size=8, dtype=jnp.float32):
  # numpy, not jax.random: compiling XLA:CPU's random normal alone takes a second
  rng = np.random.default_rng(batch * 10 + kernel)
  x = rng.normal(size=(batch, size, size, c_in)).astype(dtype)
  w = rng.normal(size=(kernel, kernel, c_in, c_out)).astype(dtype)
  return x, w, rng


def _value_and_grads(impl, x, w, cotangent, stride, padding, dimension_numbers=NHWC):
  """Output and the vjp of `cotangent` w.r.t. input and kernel."""
  f = lambda x, w: impl(x, w, (stride, stride), padding, dimension_numbers=dimension_numbers)
  y, vjp = jax.vjp(f, x, w)
  return (y,) + vjp(cotangent.astype(y.dtype))


def _jit_value_and_grads(impl, x, w, rng, stride, padding, dimension_numbers=NHWC):
  """Jitted, with a random cotangent drawn from `rng` (the same for every `impl`)."""
  f = functools.partial(_value_and_grads, impl, stride=stride, padding=padding,
                        dimension_numbers=dimension_numbers)
  out = jax.eval_shape(functools.partial(lax.conv_general_dilated, window_strides=(stride, stride),
                                         padding=padding, dimension_numbers=dimension_numbers),
                       x, w)
  cotangent = np.random.default_rng(int(rng.integers(1 << 30))).normal(size=out.shape)
  return jax.jit(f)(x, w, cotangent.astype(np.float32))


def _rng():
  return np.random.default_rng(0)


def _random_variables(model, image_shape, seed):
  """Random variables of `model`'s shapes without compiling its initializers (slow)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if jax.tree_util.keystr(path).endswith("['var']")
                       else rng.normal(0, 0.2, s.shape).astype(s.dtype)), shapes)


def _assert_close(got, want, rtol=1e-5, atol=1e-5):
  for g, w in zip(got, want):
    assert g.shape == w.shape and g.dtype == w.dtype
    scale = float(jnp.max(jnp.abs(w.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('batch,chunk', [(10, 4), (7, 3), (6, 16)])
@pytest.mark.parametrize('impl', ['chunked', 'cpu'])
def test_value_and_gradients_equal_lax(impl, case, batch, chunk):
  """Batches not divisible by the chunk (10 in 3 chunks, 7 in 3) and one below it; with
  'cpu' the 3x3 stride-1 case (6 output channels) runs paired, 4 pixels per row."""
  kernel, stride, padding = CASES[case]
  x, w, _ = _operands(batch, kernel)
  want = _jit_value_and_grads(lax.conv_general_dilated, x, w, _rng(), stride, padding)
  got = _jit_value_and_grads(conv.get(impl, chunk), x, w, _rng(), stride, padding)
  if impl == 'chunked':
    np.testing.assert_array_equal(got[0], want[0])  # forward: the same XLA convolution
    np.testing.assert_array_equal(got[1], want[1])  # input gradient: likewise
  else:  # the same products plus exact zeros: equal up to the order of float additions
    _assert_close(got[:2], want[:2], rtol=1e-6, atol=1e-6)
  _assert_close(got[2:], want[2:])                  # kernel gradient: summed per chunk


@pytest.mark.parametrize('c_in,c_out,size', [(3, 16, 32), (16, 3, 32), (16, 16, 32),
                                              (32, 32, 16), (5, 6, 12)])
def test_paired_convolution(c_in, c_out, size):
  """The CIFAR ResNet shapes: stem (3→16) and its input gradient (16→3) and the first
  stage run paired; 32 channels do not; forward and input gradient equal lax's."""
  x, w, _ = _operands(4, 3, c_in, c_out, size)
  pads = ((1, 1), (1, 1))
  params = dict(window_strides=(1, 1), padding=pads, lhs_dilation=(1, 1),
                rhs_dilation=(1, 1), feature_group_count=1, batch_group_count=1,
                dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC))
  want_pairs = {3: 4, 6: 4, 16: 2, 32: 1}[c_out]
  assert conv.pair_factor(x.shape, w.shape, params) == want_pairs
  jaxpr = str(jax.make_jaxpr(lambda x, w: conv.get('cpu')(
      x, w, (1, 1), pads, dimension_numbers=NHWC))(x, w))
  assert ('window_strides=(1, 2)' in jaxpr or 'window_strides=(1, 4)' in jaxpr) == (want_pairs > 1)
  _assert_close(_jit_value_and_grads(conv.get('cpu'), x, w, _rng(), 1, pads)[:2],
                _jit_value_and_grads(lax.conv_general_dilated, x, w, _rng(), 1, pads)[:2],
                rtol=1e-6, atol=1e-6)


def test_pairing_only_where_it_is_exact():
  """Not paired: stride 2, a width the pair factor does not divide, an output smaller
  than the input (VALID), NCHW."""
  x, w, _ = _operands(4, 3, 3, 16, 8)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  base = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(1, 1),
              rhs_dilation=(1, 1), feature_group_count=1, batch_group_count=1,
              dimension_numbers=dn)
  assert conv.pair_factor(x.shape, w.shape, base) == 2
  assert conv.pair_factor(x.shape, w.shape, dict(base, window_strides=(2, 2))) == 1
  assert conv.pair_factor((4, 8, 7, 3), w.shape, base) == 1
  assert conv.pair_factor(x.shape, w.shape, dict(base, padding=((0, 0), (0, 0)))) == 1
  nchw = lax.conv_dimension_numbers((4, 3, 8, 8), (16, 3, 3, 3), ('NCHW', 'OIHW', 'NCHW'))
  assert conv.pair_factor((4, 3, 8, 8), (16, 3, 3, 3), dict(base, dimension_numbers=nchw)) == 1


def test_other_padding_and_layouts():
  x, w, _ = _operands(9, 3)
  fast = conv.get('cpu', chunk_size=4)
  _assert_close(_jit_value_and_grads(fast, x, w, _rng(), 2, 'SAME'),
                _jit_value_and_grads(lax.conv_general_dilated, x, w, _rng(), 2, 'SAME'))
  nchw, oihw = np.transpose(x, (0, 3, 1, 2)), np.transpose(w, (3, 2, 0, 1))
  dn = ('NCHW', 'OIHW', 'NCHW')
  _assert_close(
      _jit_value_and_grads(fast, nchw, oihw, _rng(), 1, 'VALID', dn),
      _jit_value_and_grads(lax.conv_general_dilated, nchw, oihw, _rng(), 1, 'VALID', dn))


def test_dilated_kernel():
  x, w, _ = _operands(9, 3)
  f = lambda impl: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(impl(
      x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2), dimension_numbers=NHWC))),
                                    (0, 1)))
  _assert_close(f(conv.get('cpu', chunk_size=4))(x, w), f(lax.conv_general_dilated)(x, w))


def test_bfloat16():
  x, w, _ = _operands(12, 3)
  pad = CASES['3x3_s1'][2]
  to_bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)
  got = _jit_value_and_grads(conv.get('cpu', chunk_size=5), to_bf16(x), to_bf16(w),
                             _rng(), 1, pad)
  want = _jit_value_and_grads(lax.conv_general_dilated, to_bf16(x).astype(jnp.float32),
                              to_bf16(w).astype(jnp.float32), _rng(), 1, pad)
  _assert_close(got, [v.astype(jnp.bfloat16) for v in want], rtol=0, atol=3e-2)


def test_resnet20_gradients_equal_default():
  """A whole student's loss gradients with the fast conv equal those without it."""
  x = np.random.default_rng(0).normal(size=(12, 16, 16, 3)).astype(np.float32)
  labels = np.arange(12) % 10
  default = models.create('resnet20', 10)
  fast = models.create('resnet20', 10, conv_impl=conv.get('cpu', chunk_size=5))
  variables = _random_variables(default, x.shape[1:], seed=1)

  def grads(model):
    def loss(params):
      logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.grad(loss))(variables['params'])

  want, got = grads(default), grads(fast)
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    w = functools.reduce(lambda t, k: t[k.key], path, want)
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(w))),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('chunk', [4, 6])
def test_sharded_over_devices(chunk):
  """Batch sharded over all (8 virtual) devices: chunks of the global batch span device
  boundaries (4 = two devices' halves, 6 = 3 chunks, misaligned and zero-padded) and the
  result stays exact."""
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  n = 2 * len(jax.devices())
  x, w, rng = _operands(n, 3, c_in=4, c_out=8)
  w2 = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
  pad = CASES['3x3_s1'][2]

  def loss(impl, x, w, w2):
    y = jax.nn.relu(impl(x, w, (1, 1), pad, dimension_numbers=NHWC))
    return jnp.sum(jnp.sin(impl(y, w2, (2, 2), pad, dimension_numbers=NHWC)))

  want = jax.jit(jax.grad(functools.partial(loss, lax.conv_general_dilated), (0, 1, 2)))(
      x, w, w2)
  batch, rep = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  sharded = jax.jit(jax.grad(functools.partial(loss, conv.get('cpu', chunk)), (0, 1, 2)),
                    in_shardings=(batch, rep, rep), out_shardings=(batch, rep, rep))
  got = sharded(jax.device_put(x, batch), w, w2)
  assert len(got[0].sharding.device_set) == len(jax.devices())
  _assert_close(got, want)


class _CompileLog(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_train_step_does_not_recompile():
  """The project's jitted oracle-KD step with the fast conv and its XLA options compiles
  once over 3 steps."""
  config = common.base_config()
  config.batch_size = 16
  spec = data.dataset_spec('cifar10')
  impl = conv.get('cpu', chunk_size=8)
  student = models.create('resnet8', 10, conv_impl=impl)
  teacher = models.create('resnet8', 10, conv_impl=impl)
  lr_fn = optax.constant_schedule(0.05)
  state = steps.TrainState.create(_random_variables(student, (32, 32, 3), seed=0),
                                  optim.make_optimizer(config, lr_fn))
  mesh = parallel.make_mesh()
  state = parallel.replicate(state, mesh)
  t_vars = parallel.replicate(_random_variables(teacher, (32, 32, 3), seed=1), mesh)
  step = steps.jit_train_step(mesh, jax.tree.map(lambda _: parallel.replicated(mesh), state),
                              config=config,
                              oracle_settings=oracle.Settings.from_config(config.oracle),
                              student=student, teacher=teacher, spec=spec,
                              learning_rate_fn=lr_fn, distiller=methods.get(config),
                              compiler_options=conv.compiler_options('cpu', 'cpu'))
  rng = np.random.default_rng(0)
  log = _CompileLog()
  logger = logging.getLogger('jax')
  old_level = logger.level
  logger.addHandler(log)
  logger.setLevel(logging.DEBUG)
  try:
    with jax.log_compiles(True):
      for i in range(3):
        batch = parallel.global_batch(
            {'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
             'label': rng.integers(0, 10, (16,)).astype(np.int32)}, mesh)
        state, metrics = step(state, t_vars, batch, jax.random.key(i))
  finally:
    logger.removeHandler(log)
    logger.setLevel(old_level)
  compiles = [m for m in log.messages if m.startswith('Finished XLA compilation of jit(train_step)')]
  assert len(compiles) == 1, compiles
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))
  assert 'oracle_accuracy' in metrics  # the oracle step ran, teacher and all


def test_fast_path_reproduces_two_official_sgd_steps():
  """The real oracle-KD step with conv_impl='cpu' and its XLA options (multi-threaded
  convolutions) still reproduces the official code's two SGD steps (tests/data/reference,
  the tolerances of test_train_step.py)."""
  z = np.load(REFERENCE_DIR / 'cifar100_r32_r20.npz')
  config = common.base_config()
  config.method, config.oracle.gamma, config.schedule.decay_epochs = 'kd', 1.0, ()
  spec = data.dataset_spec('cifar100')
  student = models.create('resnet20', 100, conv_impl=conv.get('cpu'))
  teacher = models.create('resnet32', 100, conv_impl=conv.get('cpu'))
  t_vars = torch_import.convert_state_dict(state_dict_from(z, 'teacher/'), 'resnet32', 100)
  s_vars = torch_import.convert_state_dict(state_dict_from(z, 'student/'), 'resnet20', 100)
  lr_fn = lambda step: config.optimizer.learning_rate
  state = steps.TrainState.create(s_vars, optim.make_optimizer(config, lr_fn))
  step = jax.jit(functools.partial(steps.train_step, config=config, student=student,
                                   oracle_settings=oracle.Settings.from_config(config.oracle),
                                   teacher=teacher, spec=spec, learning_rate_fn=lr_fn,
                                   distiller=methods.get(config)),
                 compiler_options=conv.compiler_options('cpu', 'cpu'))
  images, y = z['images_uint8'], z['y']
  batches = [{'image': images, 'label': y},
             {'image': images[:, :, ::-1], 'label': np.roll(y, 1)}]
  prev = state_dict_from(z, 'student/')
  for k, batch in enumerate(batches, start=1):
    state, metrics = step(state, t_vars, batch, jax.random.key(k))
    np.testing.assert_allclose(metrics['loss'], z[f'sgd2/loss_step{k}'], rtol=1e-4, atol=1e-4)
    ours, ref = torch_import.to_state_dict(state.variables()), state_dict_from(z, f'sgd2/after{k}/')
    for name, value in ref.items():
      if name.endswith(('running_mean', 'running_var')):
        np.testing.assert_allclose(ours[name], value, rtol=2e-4, atol=2e-3, err_msg=name)
      else:  # as test_train_step: within a fraction of the step's own update
        update = np.linalg.norm(value - prev[name])
        assert np.linalg.norm(ours[name] - value) <= (0.02 if k == 1 else 0.2) * update, name
    prev = ref


def test_get():
  assert conv.get('default') is None
  assert conv.get('chunked').func is conv.chunked_conv_general_dilated
  assert conv.get('cpu').keywords == {'pair_narrow': True, 'chunk_size': conv.DEFAULT_CHUNK_SIZE}
  assert conv.resolve('auto', 'cpu', 1) == 'cpu'
  assert conv.resolve('auto', 'cpu', 1, (8, 8, 1)) == 'patch'  # the digits
  assert conv.resolve('auto', 'cpu', 1, (32, 32, 3)) == 'cpu'
  assert conv.resolve('auto', 'cpu', 8, (8, 8, 1)) == 'default'
  assert conv.get('patch') is patch_conv.patch_conv
  assert conv.compiler_options('patch', 'cpu') == conv.CPU_COMPILER_OPTIONS
  assert conv.resolve('auto', 'cpu', 8) == 'default' == conv.resolve('auto', 'gpu', 1)
  assert conv.compiler_options('chunked', 'cpu') == conv.CPU_COMPILER_OPTIONS
  assert conv.compiler_options('cpu', 'cpu') == conv.CPU_COMPILER_OPTIONS
  assert conv.compiler_options('auto', 'cpu', 8) == {}
  assert conv.compiler_options('chunked', 'gpu') == {} == conv.compiler_options('default', 'cpu')
  impl, options = conv.choose('auto', device_count=1, backend='cpu')
  assert impl.keywords == conv.get('cpu').keywords and options == conv.CPU_COMPILER_OPTIONS
  assert conv.choose('auto', device_count=8, backend='cpu') == (None, {})
  with pytest.raises(ValueError, match='Unknown conv_impl'):
    conv.get('fast')
  with pytest.raises(ValueError, match='chunk_size'):
    conv.get('chunked', chunk_size=0)
