"""Every registered model builds, runs, counts its PyTorch parameters and exposes features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REFERENCE_DIR, state_dict_from

from oracle_jax import models

# torchvision at 1000 classes (torchvision.models.resnetXX().parameters()).
TORCHVISION_COUNTS = {'resnet18': 11_689_512, 'resnet34': 21_797_672,
                      'resnet50': 25_557_032, 'resnet101': 44_549_160}


def param_count(variables):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def abstract(name, classes, size=32, **kwargs):
  model = models.create(name, classes, **kwargs)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


@pytest.mark.parametrize('name', sorted(TORCHVISION_COUNTS))
def test_imagenet_parameter_counts(name):
  assert param_count(abstract(name, 1000, 224)) == TORCHVISION_COUNTS[name]


@pytest.mark.parametrize('case,prefix,name', [('cifar100_r32_r20', 'teacher/', 'resnet32'),
                                              ('cifar100_r32_r20', 'student/', 'resnet20'),
                                              ('cifar10_r20_r20', 'teacher/', 'resnet20')])
def test_cifar_parameter_counts_match_reference_state_dicts(case, prefix, name):
  z = np.load(REFERENCE_DIR / f'{case}.npz')
  sd = state_dict_from(z, prefix)
  torch_params = sum(v.size for k, v in sd.items() if not k.endswith(('running_mean', 'running_var')))
  classes = sd['fc.bias'].shape[0]
  assert param_count(abstract(name, classes)) == torch_params


# Counts of RepDistiller's models at 100 classes (its README's table: resnet8x4 1.23M,
# resnet32x4 7.43M, wrn_40_2 2.25M, wrn_16_2 0.70M, …), derived from the layouts.
CIFAR_COUNTS = {'resnet8': 83_892, 'resnet14': 181_108, 'resnet20': 278_324,
                'resnet32': 472_756, 'resnet44': 667_188, 'resnet56': 861_620,
                'resnet110': 1_736_564, 'resnet8x4': 1_233_540, 'resnet32x4': 7_433_860,
                'wrn_16_1': 180_916, 'wrn_16_2': 703_284, 'wrn_40_1': 569_780,
                'wrn_40_2': 2_255_156}


@pytest.mark.parametrize('name', sorted(CIFAR_COUNTS))
def test_cifar_model_parameter_counts(name):
  assert param_count(abstract(name, 100)) == CIFAR_COUNTS[name]


def test_small_stem_removes_downsampling():
  model = models.create('resnet18', 200, small_stem=True)
  x = jnp.zeros((2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x)
  assert variables['params']['conv1']['kernel'].shape == (3, 3, 3, 64)
  _, feats = model.apply(variables, x, return_features=True)
  assert feats['stem'].shape == (2, 64, 64, 64) and feats['stage4'].shape == (2, 8, 8, 512)
  with pytest.raises(ValueError, match='small_stem applies to'):
    models.create('resnet20', 10, small_stem=True)


def _input(name, batch=3):
  size = 64 if name in models.IMAGENET_MODELS else 16
  return jax.random.normal(jax.random.key(0), (batch, size, size, 3))


@pytest.mark.parametrize('name', models.NAMES)
def test_feature_api_shapes(name):
  """Traced without running: the features dict every distiller relies on."""
  model, x = models.create(name, 7), _input(name)
  variables = jax.eval_shape(model.init, jax.random.key(1), x)
  assert set(variables) == {'params', 'batch_stats'}
  logits, feats = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), variables)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  stages = [k for k in feats if k.startswith('stage')]
  assert stages == [f'stage{i}' for i in range(1, len(stages) + 1)] and len(stages) in (3, 4)
  cifar_resnet = name.startswith('resnet') and name not in models.IMAGENET_MODELS
  assert set(feats) == {'stem', *stages, 'pooled', 'logits', *(['blocks'] * cifar_resnet)}
  if cifar_resnet:  # every residual block, the last of each stage being the stage output
    depth = int(name[len('resnet'):].split('x')[0])
    assert len(feats['blocks']) == (depth - 2) // 2
    assert feats['blocks'][-1].shape == feats[stages[-1]].shape
  assert feats['pooled'].shape == (3, feats[stages[-1]].shape[-1])
  assert all(feats[k].ndim == 4 and feats[k].shape[0] == 3 for k in ['stem', *stages])


# One model of each family runs for real (compiling all 17 would cost minutes).
@pytest.mark.parametrize('name', ['resnet8', 'resnet8x4', 'wrn_16_2', 'resnet18', 'resnet50'])
def test_forward_train_and_eval(name):
  model, x = models.create(name, 7), _input(name)
  variables = model.init(jax.random.key(1), x)
  logits, feats = model.apply(variables, x, return_features=True)
  assert np.all(np.isfinite(logits))
  np.testing.assert_array_equal(feats['logits'], logits)
  train_logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert np.all(np.isfinite(train_logits)) and not np.allclose(train_logits, logits)
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), updates['batch_stats'],
                       variables['batch_stats'])
  assert all(jax.tree.leaves(moved))


def test_batchnorm_matches_pytorch_update_rule():
  from oracle_jax.models.layers import BatchNorm
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3 + 1
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)
  y, updates = bn.apply(variables, x, mutable=['batch_stats'])
  xn = np.asarray(x, np.float64).reshape(-1, 2)
  mean, biased, unbiased = xn.mean(0), xn.var(0), xn.var(0, ddof=1)
  np.testing.assert_allclose(y.reshape(-1, 2), (xn - mean) / np.sqrt(biased + 1e-5), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * unbiased, rtol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_norm_train_vjp_equals_autodiff_of_two_pass_formula(dtype):
  """The closed-form VJP of train-mode BatchNorm against jax.grad of the plain two-pass
  formula, with cotangents on y, the batch mean and the batch variance."""
  from oracle_jax.models.layers import batch_norm_train
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(8, 5, 5, 6) * 3 + 1.5, dtype)
  scale = jnp.asarray(rng.rand(6) + 0.5, jnp.float32)
  bias = jnp.asarray(rng.randn(6), jnp.float32)

  def plain(x, scale, bias):
    x32 = x.astype(jnp.float32)
    mean = x32.mean((0, 1, 2))
    var = jnp.square(x32 - mean).mean((0, 1, 2))
    return (x32 - mean) * (scale * jax.lax.rsqrt(var + 1e-5)) + bias, mean, var

  weights = [jnp.asarray(rng.randn(*o.shape), jnp.float32) for o in plain(x, scale, bias)]
  loss = lambda f: lambda *a: sum(jnp.sum(o * w) for o, w in zip(f(*a), weights))
  ours = batch_norm_train(x, scale, bias, 1e-5)
  for a, b in zip(ours, plain(x, scale, bias)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  expected = jax.grad(loss(plain), (0, 1, 2))(x, scale, bias)
  got = jax.grad(loss(lambda *a: batch_norm_train(*a, 1e-5)), (0, 1, 2))(x, scale, bias)
  assert got[0].dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32),
                               rtol=tol, atol=tol * float(jnp.abs(e.astype(jnp.float32)).max()))


def test_unknown_model_lists_names():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet21'; choose one of: .*resnet20"):
    models.create('resnet21', 10)
