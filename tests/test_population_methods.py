"""Populations of every distillation method: each member equals its sequential run.

For DKD, AT, FitNet and SAD, a population of the method without the oracle (seed 0, the
default weights), with it (seed 1, its own γ, weights, CE weight and learning rate) and a
scratch member (seed 1) against each member run on its own. Tiny settings as
tests/test_population.py, module-scoped results: each program compiles once.
"""
import os
import shutil

import jax
import numpy as np
import pytest
from helpers import digits_config, metric_records

from oracle_jax import checkpoints, errors, parallel, population, sweep, train

STEPS = 4
# The second (oracle) member's own weights, per method (config keys).
OWN_WEIGHTS = {
    'dkd': {'distill.dkd_alpha': 0.5, 'distill.dkd_beta': 2.0, 'distill.dkd_temperature': 2.0,
            'distill.dkd_warmup_epochs': 0.0},
    'at': {'distill.at_beta': 500.0},
    'fitnet': {'distill.fitnet_weight': 50.0},
    'sad': {'distill.sad_beta': 100.0, 'distill.sad_kd_weight': 0.5, 'temperature': 2.0},
}


def member_config(data_dir, teacher_dir, method, **overrides):
  return digits_config(data_dir, method=method, **{'train_steps': STEPS,
      'teacher.model': 'resnet8', 'teacher.checkpoint': teacher_dir,
      'checkpoint_every_steps': 2, **overrides})


def method_configs(data_dir, teacher_dir, method):
  make = lambda m=method, **o: member_config(data_dir, teacher_dir, m, **o)
  return {f'{method}_seed0': make(**{'oracle.enabled': False}),
          f'oracle_{method}_seed1': make(seed=1, ce_weight=0.5, **{
              'oracle.gamma': 1.0, 'optimizer.learning_rate': 0.1, **OWN_WEIGHTS[method]}),
          'scratch_seed1': make('scratch', seed=1)}


def one_device():
  return parallel.make_mesh(jax.devices()[:1])


def members_in(configs, workdir):
  return [population.Member(name, c, os.path.join(workdir, name)) for name, c in configs.items()]


def restored(config, directory, seeds):
  """The state in `directory`'s newest checkpoint: one run's (an int seed) or a
  population's (a list of seeds; `config` one of its distilled members)."""
  run = train.Run(config, one_device())
  initial = (population.stack([run.init_state(s) for s in seeds]) if isinstance(seeds, list)
             else run.init_state(seeds))
  state, _ = checkpoints.TrainCheckpoints(os.path.join(directory, 'checkpoints')).restore_latest(
      initial)
  return jax.device_get(state)


def saved(state):
  """What a run trains and checkpoints: variables and the distiller's modules."""
  return {**state.variables(), 'distiller': state.distiller_params}


@pytest.fixture(scope='module')
def scratch_run(digits_data_dir, digits_teacher_dir, tmp_path_factory):
  """The scratch member's sequential run, the same for every method's population."""
  config = member_config(digits_data_dir, digits_teacher_dir, 'scratch', seed=1)
  workdir = tmp_path_factory.mktemp('scratch')
  return workdir, train.train_and_evaluate(config, str(workdir), mesh=one_device())


@pytest.fixture(scope='module')
def trained(digits_data_dir, digits_teacher_dir, scratch_run, tmp_path_factory):
  """`trained(method)`: `(configs, root, population results, sequential results,
  sequential workdirs)` of the method's population, trained once per module."""
  done = {}

  def train_method(method):
    configs = method_configs(digits_data_dir, digits_teacher_dir, method)
    root = tmp_path_factory.mktemp(method)
    results = population.train_population(members_in(configs, str(root / 'pop')),
                                          str(root / 'pop' / 'population'), mesh=one_device())
    sequential, workdirs = {}, {}
    for name, c in configs.items():
      if name == 'scratch_seed1':
        workdirs[name], sequential[name] = scratch_run
      else:
        workdirs[name] = root / 'seq' / name
        sequential[name] = train.train_and_evaluate(c, str(workdirs[name]), mesh=one_device())
    return configs, root, dict(zip(configs, results)), sequential, workdirs

  return lambda method: done.get(method) or done.setdefault(method, train_method(method))


@pytest.mark.parametrize('method', ['dkd', 'at', 'fitnet', 'sad'])
def test_each_member_is_bit_identical_to_its_sequential_run(trained, method):
  configs, root, results, sequential, workdirs = trained(method)
  first = next(iter(configs.values()))
  stacked = restored(first, str(root / 'pop' / 'population'),
                     [c.seed for c in configs.values()])
  for i, (name, config) in enumerate(configs.items()):
    assert results[name] == sequential[name], name
    member = population.unstack(stacked, i)
    alone = restored(config, str(workdirs[name]), config.seed)
    if config.method == 'scratch':  # it trains no distiller modules
      member, alone = member.variables(), alone.variables()
    else:
      member, alone = saved(member), saved(alone)
    jax.tree.map(np.testing.assert_array_equal, member, alone)
    pop_records = metric_records(root / 'pop' / name / 'metrics.jsonl')
    assert pop_records == metric_records(workdirs[name] / 'metrics.jsonl')
    assert len(pop_records) >= STEPS // 2


def test_resume_restores_the_distiller_modules(trained, tmp_path):
  configs, root, results, _, _ = trained('fitnet')  # FitNet trains a regressor
  first = next(iter(configs.values()))
  shutil.copytree(root / 'pop', tmp_path / 'pop')
  directory = tmp_path / 'pop' / 'population'
  shutil.rmtree(directory / 'checkpoints' / str(STEPS))  # back to step 2
  resumed = population.train_population(members_in(configs, str(tmp_path / 'pop')),
                                        str(directory), mesh=one_device())
  assert dict(zip(configs, resumed)) == results
  seeds = [c.seed for c in configs.values()]
  state = restored(first, str(directory), seeds)
  assert jax.tree.leaves(state.distiller_params)
  jax.tree.map(np.testing.assert_array_equal, saved(state),
               saved(restored(first, str(root / 'pop' / 'population'), seeds)))


def test_two_distilled_methods_are_refused(digits_data_dir, digits_teacher_dir, tmp_path):
  configs = {'dkd_seed0': member_config(digits_data_dir, digits_teacher_dir, 'dkd'),
             'at_seed0': member_config(digits_data_dir, digits_teacher_dir, 'at')}
  with pytest.raises(errors.ConfigError, match="'at_seed0' distils with 'at', 'dkd_seed0'"):
    population.train_population(members_in(configs, str(tmp_path)), str(tmp_path / 'p'),
                                mesh=one_device())


def test_sweep_groups_one_method_per_population(digits_data_dir, digits_teacher_dir):
  make = lambda method, seed: (f'{method}_seed{seed}', seed, member_config(
      digits_data_dir, digits_teacher_dir, method, seed=seed))
  runs = [make(m, s) for m in ('scratch', 'kd', 'dkd') for s in (0, 1)]
  groups = [[name for name, _, _ in group] for group in sweep.population_groups(runs, True)]
  assert groups == [['scratch_seed0', 'scratch_seed1', 'kd_seed0', 'kd_seed1'],
                    ['dkd_seed0', 'dkd_seed1']]
  assert len(sweep.population_groups(runs, False)) == len(runs)


def test_dkd_sweep_is_the_same_with_and_without_population(digits_data_dir, digits_teacher_dir,
                                                           tmp_path):
  config = member_config(digits_data_dir, digits_teacher_dir, 'dkd')
  results = {mode: sweep.run_grid(config, str(tmp_path / mode), ['dkd', 'oracle_dkd'], [0, 1],
                                  population=mode, mesh=one_device())
             for mode in ('auto', 'off')}
  assert (tmp_path / 'auto' / 'populations').is_dir()
  assert results['auto'] == results['off']
