"""Scale-out: 2 processes × 4 devices = 1 process × 8 devices; checkpoints move between
device counts; bf16 computes in bf16 with a float32 oracle update."""
import functools
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, digits_config, final_params, free_port

from oracle_jax import models, oracle, parallel, train


def test_two_processes_equal_one_process(digits_data_dir, digits_teacher_dir, tmp_path):
  flags = ['--config=' + os.path.join(REPO, 'configs', 'default.py'), '--config.method=kd',
           '--config.student.model=resnet8',
           '--config.teacher.model=resnet8', f'--config.teacher.checkpoint={digits_teacher_dir}',
           f'--config.data_dir={digits_data_dir}', '--config.batch_size=16', '--config.eval_batch_size=64',
           '--config.train_steps=6', '--config.log_every_steps=2',
           '--config.checkpoint_every_steps=3']
  port = free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'launch', 'main.py'), f'--workdir={tmp_path / "mp"}',
       f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}', *flags],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  # Every process's stderr: when one fails, the other usually dies waiting at a barrier.
  assert [p.returncode for p in procs] == [0, 0], '\n\n'.join(
      f'process {i}:\n{err[-2000:]}' for i, (_, err) in enumerate(outs))
  config = digits_config(digits_data_dir, method='kd', train_steps=6, checkpoint_every_steps=3,
                         **{'teacher.model': 'resnet8', 'teacher.checkpoint': digits_teacher_dir})
  single = train.train_and_evaluate(config, str(tmp_path / 'sp'))
  import json
  multi = json.loads((tmp_path / 'mp' / 'results.json').read_text())
  # Each of the 540 test digits is counted exactly once across the two processes.
  assert multi['final_top1'] == pytest.approx(single['final_top1'], abs=1 / 540 + 1e-9)
  np.testing.assert_allclose(multi['final_train_loss'], single['final_train_loss'], rtol=1e-4)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-5),
               final_params(config, str(tmp_path / 'mp')), final_params(config, str(tmp_path / 'sp')))


@pytest.mark.parametrize('first,second', [(8, 1), (1, 8)])
def test_checkpoint_moves_between_device_counts(digits_data_dir, tmp_path, first, second):
  config = digits_config(digits_data_dir, method='scratch', train_steps=8, checkpoint_every_steps=4)
  mesh = lambda n: parallel.make_mesh(jax.devices()[:n])
  train.train_and_evaluate(config, str(tmp_path / 'straight'), mesh=mesh(first))
  shutil.copytree(tmp_path / 'straight', tmp_path / 'moved')
  shutil.rmtree(tmp_path / 'moved' / 'checkpoints' / '8')  # as if stopped after step 4
  train.train_and_evaluate(config, str(tmp_path / 'moved'), mesh=mesh(second))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-5),
               final_params(config, str(tmp_path / 'moved')),
               final_params(config, str(tmp_path / 'straight')))


def test_bfloat16_run_is_close_to_float32(digits_data_dir, digits_teacher_dir, tmp_path):
  kwargs = dict(method='kd', train_steps=4, **{'teacher.model': 'resnet8',
                                               'teacher.checkpoint': digits_teacher_dir})
  f32 = train.train_and_evaluate(digits_config(digits_data_dir, **kwargs), str(tmp_path / 'f32'))
  bf16 = train.train_and_evaluate(digits_config(digits_data_dir, dtype='bfloat16', **kwargs),
                                  str(tmp_path / 'bf16'))
  assert np.isfinite(bf16['final_train_loss'])
  assert bf16['final_train_loss'] == pytest.approx(f32['final_train_loss'], rel=0.05)
  params = final_params(digits_config(digits_data_dir, dtype='bfloat16', **kwargs), str(tmp_path / 'bf16'))
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(params))  # float32 master params


def test_bfloat16_teacher_gives_float32_oracle_update():
  model = models.create('resnet8', 10, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  variables = model.init(jax.random.key(1), x)
  logits_fn = functools.partial(model.apply, variables)
  jaxpr = jax.make_jaxpr(lambda x: oracle.reinforce(logits_fn, x, jnp.arange(8), gamma=1.0))(x)
  assert jaxpr.out_avals[0].dtype == jnp.float32
  text = str(jaxpr)
  assert 'bf16[8,8,8,16]' in text  # teacher activations are bf16
  # The update x - γ·g·|x| is computed on float32 arrays of x's shape.
  assert 'f32[8,8,8,1]' in text and text.count('abs') >= 1


class _LinearNet(flax.linen.Module):
  """A BN-free classifier: gradient accumulation is then exact."""
  num_classes: int

  @flax.linen.compact
  def __call__(self, x, train=False, return_features=False):
    del train
    logits = flax.linen.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
    return (logits, {'logits': logits}) if return_features else logits


@pytest.mark.parametrize('oracle_on', [False, True])
def test_gradient_accumulation_equals_one_big_batch_without_batchnorm(oracle_on):
  from configs import common  # pylint: disable=g-import-not-at-top
  from oracle_jax import data, methods, optim, steps  # pylint: disable=g-import-not-at-top
  spec = data.dataset_spec('digits')
  student, teacher = _LinearNet(10), _LinearNet(10)
  x = np.zeros((1, 8, 8, 1), np.float32)
  s_vars, t_vars = student.init(jax.random.key(0), x), teacher.init(jax.random.key(1), x)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  out = {}
  for accum in (1, 4):
    config = common.base_config()
    config.grad_accum_steps, config.oracle.enabled = accum, oracle_on
    tx = optim.make_optimizer(config, lambda _: 0.1)
    step = jax.jit(functools.partial(steps.train_step, config=config, student=student,
                                     oracle_settings=oracle.Settings.from_config(config.oracle),
                                     teacher=teacher, spec=spec, learning_rate_fn=lambda _: 0.1,
                                     distiller=methods.get(config)))
    state = steps.TrainState.create(s_vars, tx)
    for _ in range(2):
      state, metrics = step(state, t_vars, batch, jax.random.key(0))
    out[accum] = (state.params, metrics['loss'])
  np.testing.assert_allclose(out[1][1], out[4][1], rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               out[1][0], out[4][0])


def test_gradient_accumulation_trains_with_batchnorm(digits_data_dir, tmp_path):
  """With BatchNorm each micro-batch uses its own statistics: close, not equal."""
  one = train.train_and_evaluate(digits_config(digits_data_dir, method='scratch', train_steps=4),
                                 str(tmp_path / 'one'))
  two = train.train_and_evaluate(digits_config(digits_data_dir, method='scratch', train_steps=4,
                                               grad_accum_steps=2), str(tmp_path / 'two'))
  assert np.isfinite(two['final_train_loss'])
  assert two['final_train_loss'] == pytest.approx(one['final_train_loss'], rel=0.2)
  assert two['final_train_loss'] != one['final_train_loss']
