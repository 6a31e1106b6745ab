"""`reinforce`: per-example, jit/shard invariant, exact at γ = 0, no gradient through x*."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oracle_jax import losses, models, oracle


@pytest.fixture(scope='module')
def teacher():
  model = models.create('resnet8', 10)
  x = jax.random.normal(jax.random.key(0), (64, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  # Calibrate BN running statistics so eval-mode logits have a realistic scale.
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
  labels = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  return model, variables, x, labels


def logits_fn(teacher):
  model, variables, _, _ = teacher
  return functools.partial(model.apply, variables, train=False)


def test_matches_batch_mean_gradient_at_reference_batch(teacher):
  """At batch 64 with reference_batch_size 64 x* is the official batch-mean formula."""
  f, (_, _, x, y) = logits_fn(teacher), teacher
  grad = jax.grad(lambda v: losses.cross_entropy(f(v), y))(x)
  expected = x - 0.5 * grad * jnp.abs(x)
  got = oracle.reinforce(f, x, y, gamma=0.5)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(got, x)


def test_jit_equals_eager(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  eager = oracle.reinforce(f, x, y, gamma=1.0, steps=2)
  jitted = jax.jit(lambda x, y: oracle.reinforce(f, x, y, gamma=1.0, steps=2))(x, y)
  # jit fuses (and on AVX-512 contracts into FMAs) what eager runs op by op. Float32
  # rounding can flip a teacher ReLU in the second step, moving a few pixels of x* by
  # ~1e-5 (seen: 14 of 49,152 values, 7.4e-6, on an Intel Xeon; 52 on an AMD EPYC with
  # the fixture's BN statistics from the contraction-stable running update), against a
  # refinement x* - x of up to ~8e-4 here.
  np.testing.assert_allclose(jitted, eager, rtol=0, atol=2e-5)
  assert float(jnp.mean(jnp.abs(jitted - eager) > 1e-6)) < 2e-3
  assert float(jnp.abs(jitted - x).max()) > 5e-4


def test_per_example_independence(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  batch = oracle.reinforce(f, x, y, gamma=1.0)
  for i in (0, 17, 63):
    alone = oracle.reinforce(f, x[i:i + 1], y[i:i + 1], gamma=1.0)
    np.testing.assert_allclose(alone[0], batch[i], rtol=1e-6, atol=1e-6)
  # A smaller batch gives the same x* per image (γ is tied to reference_batch_size).
  np.testing.assert_allclose(oracle.reinforce(f, x[:8], y[:8], gamma=1.0), batch[:8],
                             rtol=1e-6, atol=1e-6)


def test_vmap_over_examples(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  single = lambda xi, yi: oracle.reinforce(f, xi[None], yi[None], gamma=1.0)[0]
  np.testing.assert_allclose(jax.vmap(single)(x, y), oracle.reinforce(f, x, y, gamma=1.0),
                             rtol=1e-6, atol=1e-6)


def test_sharded_over_eight_devices_equals_one_device(teacher):
  assert jax.device_count() == 8
  f, (_, _, x, y) = logits_fn(teacher), teacher
  mesh = Mesh(np.array(jax.devices()), ('data',))
  data = NamedSharding(mesh, P('data'))
  step = jax.jit(lambda x, y: oracle.reinforce(f, x, y, gamma=1.0), out_shardings=data)
  sharded = step(jax.device_put(x, data), jax.device_put(y, data))
  assert len(sharded.sharding.device_set) == 8
  single = jax.jit(lambda x, y: oracle.reinforce(f, x, y, gamma=1.0))(
      jax.device_put(x, jax.devices()[0]), jax.device_put(y, jax.devices()[0]))
  np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=1e-6)


def test_gamma_zero_is_identity_and_dtype_kept(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  np.testing.assert_array_equal(oracle.reinforce(f, x, y, gamma=0.0), x)
  traced = jax.jit(lambda x, g: oracle.reinforce(f, x, y, gamma=g))(x, 0.0)
  np.testing.assert_array_equal(traced, x)
  bf16 = oracle.reinforce(f, x.astype(jnp.bfloat16), y, gamma=1.0)
  assert bf16.dtype == jnp.bfloat16 and bf16.shape == x.shape


def test_no_gradient_flows_through_x_star(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  g = jax.grad(lambda x: jnp.sum(oracle.reinforce(f, x, y, gamma=1.0)))(x)
  np.testing.assert_array_equal(g, jnp.zeros_like(x))


def test_steps_repeat_from_previous_iterate(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  once = oracle.reinforce(f, x, y, gamma=0.3)
  np.testing.assert_allclose(oracle.reinforce(f, x, y, gamma=0.3, steps=2),
                             oracle.reinforce(f, once, y, gamma=0.3), rtol=1e-6, atol=1e-6)


def test_oracle_raises_teacher_confidence_in_the_label(teacher):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  x_star = oracle.reinforce(f, x, y, gamma=5.0)
  assert losses.cross_entropy(f(x_star), y) < losses.cross_entropy(f(x), y)


def test_make_reinforce(teacher):
  model, variables, x, y = teacher
  fn = oracle.make_reinforce(model, gamma=1.0)
  np.testing.assert_allclose(fn(variables, x, y),
                             oracle.reinforce(logits_fn(teacher), x, y, gamma=1.0),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('kwargs,message', [
    (dict(gamma=1.0, steps=0), 'oracle steps must be >= 1'),
    (dict(gamma=-1.0), 'oracle gamma must be >= 0'),
    (dict(gamma=1.0, reference_batch_size=0), 'reference_batch_size must be >= 1'),
])
def test_bad_arguments(teacher, kwargs, message):
  f, (_, _, x, y) = logits_fn(teacher), teacher
  with pytest.raises(ValueError, match=message):
    oracle.reinforce(f, x, y, **kwargs)
