"""Populations: each member equals its sequential run; resume, sweeps, errors, devices.

Tiny settings (resnet8 student and teacher, digits, batch 16, 4 steps) and module-scoped
results, so the population and sequential programs compile once per module.
"""
import json
import os

import jax
import numpy as np
import pytest
from helpers import assert_trees_close, digits_config, metric_records

from oracle_jax import checkpoints, metrics_io, parallel, population, sweep, train

STEPS = 4


def member_config(data_dir, teacher_dir, method='kd', **overrides):
  return digits_config(data_dir, method=method, **{'train_steps': STEPS,
      'teacher.model': 'resnet8', 'teacher.checkpoint': teacher_dir,
      'checkpoint_every_steps': 2, **overrides})


@pytest.fixture(scope='module')
def mixed(digits_data_dir, digits_teacher_dir):
  """A mixed population: KD with and without the oracle on one batch, a second seed
  with its own γ, α, τ and learning rate, and a scratch member sharing that batch."""
  make = lambda method='kd', **o: member_config(digits_data_dir, digits_teacher_dir, method, **o)
  return {'kd_seed0': make(**{'oracle.enabled': False}),
          'oracle_kd_seed0': make(**{'oracle.gamma': 5.0}),
          'oracle_kd_seed1': make(seed=1, alpha=0.5, temperature=2.0,
                                  **{'oracle.gamma': 1.0, 'optimizer.learning_rate': 0.1}),
          'scratch_seed1': make('scratch', seed=1)}


def members_in(configs, workdir):
  return [population.Member(name, c, os.path.join(workdir, name)) for name, c in configs.items()]


def population_variables(configs, directory, mesh):
  """The final variables of every member, from the population's checkpoint."""
  run = train.Run(next(iter(configs.values())), mesh)
  initial = population.stack([run.init_state(c.seed) for c in configs.values()])
  state, _ = checkpoints.TrainCheckpoints(os.path.join(directory, 'checkpoints')).restore_latest(
      initial)
  return jax.device_get(state.variables())


def one_device():
  return parallel.make_mesh(jax.devices()[:1])


@pytest.fixture(scope='module')
def trained(mixed, tmp_path_factory):
  """The mixed population on one device, and each member run on its own."""
  root = tmp_path_factory.mktemp('population')
  mesh = one_device()
  results = population.train_population(members_in(mixed, str(root / 'pop')),
                                        str(root / 'pop' / 'population'), mesh=mesh)
  sequential = {name: train.train_and_evaluate(c, str(root / 'seq' / name), mesh=mesh)
                for name, c in mixed.items()}
  return root, dict(zip(mixed, results)), sequential


def sequential_variables(config, workdir):
  run = train.Run(config, one_device())
  state, _ = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).restore_latest(
      run.init_state(config.seed))
  return jax.device_get(state.variables())


def test_plan_shares_batches_and_oracle_inputs(mixed):
  seeds, arrays = population.plan(list(mixed.values()))
  assert seeds == [0, 1]
  np.testing.assert_array_equal(arrays['batch'], [0, 0, 1, 1])
  # The teacher's table: row 0 its plain forward on batch 0 (the KD member's); row 1 x* of
  # (batch 0, γ 5), row 2 x* of (batch 1, γ 1); rows 3-4 its input-gradient pass on
  # batches 0 and 1 (the oracle members'). Nothing else: batch 1 has no KD member.
  np.testing.assert_array_equal(arrays['plain_batch'], [0])
  np.testing.assert_array_equal(arrays['gradient_batch'], [0, 1])
  np.testing.assert_array_equal(arrays['oracle_gradient'], [0, 1])
  np.testing.assert_allclose(arrays['oracle_gamma'], [5.0, 1.0])
  np.testing.assert_array_equal(arrays['teacher_row'], [0, 1, 2, 0])
  np.testing.assert_array_equal(arrays['teacher_x_row'], [0, 3, 4, 0])
  np.testing.assert_allclose(arrays['distiller']['alpha'], [1.0, 1.0, 0.5, 0.0])
  np.testing.assert_allclose(arrays['ce_weight'], [1.0, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(arrays['distiller']['temperature'], [4.0, 4.0, 2.0, 4.0])
  np.testing.assert_allclose(arrays['learning_rate_scale'], [1.0, 1.0, 2.0, 1.0])


def test_each_member_is_bit_identical_to_its_sequential_run(mixed, trained):
  root, results, sequential = trained
  variables = population_variables(mixed, str(root / 'pop' / 'population'), one_device())
  for i, (name, config) in enumerate(mixed.items()):
    assert results[name] == sequential[name], name
    jax.tree.map(np.testing.assert_array_equal, population.unstack(variables, i),
                 sequential_variables(config, str(root / 'seq' / name)))


def test_members_write_their_sequential_runs_metrics(trained):
  root, _, _ = trained
  for name in ('kd_seed0', 'oracle_kd_seed0', 'oracle_kd_seed1', 'scratch_seed1'):
    pop_records = metric_records(root / 'pop' / name / 'metrics.jsonl')
    assert pop_records == metric_records(root / 'seq' / name / 'metrics.jsonl')
    assert len(pop_records) >= STEPS // 2
    assert (root / 'pop' / name / 'results.json').exists()
    # The population's throughput, at each log step: 4 members × batch 16 images a step.
    lines = (root / 'pop' / name / 'metrics.jsonl').read_text().splitlines()
    perf = [r for r in map(json.loads, lines) if 'perf/steps_per_sec' in r]
    assert [r['step'] for r in perf] == [2, 4]
    for r in perf:
      assert r['perf/steps_per_sec'] > 0
      assert r['perf/img_per_sec'] == pytest.approx(r['perf/steps_per_sec'] * 4 * 16)
  assert (root / 'pop' / 'scratch_seed1' / 'teacher').is_dir()


def test_population_on_eight_devices_equals_one_device(mixed, trained, tmp_path):
  root, results, _ = trained
  mesh = parallel.make_mesh()  # 8 virtual CPU devices: 4 members × 2 batch shards
  assert population.make_mesh(len(mixed), jax.devices()).devices.shape == (4, 2)
  eight = population.train_population(members_in(mixed, str(tmp_path)),
                                      str(tmp_path / 'population'), mesh=mesh)
  for name, r in zip(mixed, eight):
    assert r['final_train_loss'] == pytest.approx(results[name]['final_train_loss'], rel=1e-5)
  assert_trees_close(population_variables(mixed, str(tmp_path / 'population'), mesh),
                     population_variables(mixed, str(root / 'pop' / 'population'), one_device()),
                     rtol=2e-4, atol=2e-5)


def test_resume_is_bit_identical(mixed, trained, tmp_path):
  root, _, _ = trained
  members = members_in(mixed, str(tmp_path))
  directory = tmp_path / 'population'
  population.train_population(members, str(directory), mesh=one_device())
  (directory / 'checkpoints' / str(STEPS)).rename(tmp_path / 'moved')  # back to step 2
  population.train_population(members, str(directory), mesh=one_device())
  jax.tree.map(np.testing.assert_array_equal,
               population_variables(mixed, str(directory), one_device()),
               population_variables(mixed, str(root / 'pop' / 'population'), one_device()))


def test_non_finite_member_is_named(digits_data_dir, digits_teacher_dir, tmp_path):
  make = lambda **o: member_config(digits_data_dir, digits_teacher_dir, **o)
  configs = {'kd_seed0': make(), 'kd_seed1': make(seed=1, **{'optimizer.learning_rate': 1e30})}
  with pytest.raises(metrics_io.NonFiniteLossError, match="member 'kd_seed1'"):
    population.train_population(members_in(configs, str(tmp_path)), str(tmp_path / 'p'),
                                mesh=one_device())


def test_incompatible_members_are_refused(mixed, tmp_path):
  configs = dict(mixed)
  configs['other'] = configs['kd_seed0'].copy_and_resolve_references()
  configs['other'].batch_size = 32
  with pytest.raises(ValueError, match="'other' differs"):
    population.train_population(members_in(configs, str(tmp_path)), str(tmp_path / 'p'))


def test_several_processes_need_a_dataset_in_memory(mixed, monkeypatch):
  imagenet = mixed['kd_seed0'].copy_and_resolve_references()
  imagenet.dataset = 'imagenet2012'
  assert population.supported(mixed['kd_seed0']) and population.supported(imagenet)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert population.supported(mixed['kd_seed0'])  # each process reads whole batches
  assert not population.supported(imagenet)  # streamed: each process reads its own shard
  with pytest.raises(ValueError, match="cannot join a population.*not a streamed one"):
    population.check_members(members_in({'kd_seed0': imagenet}, '/nonexistent'))


def test_sweep_is_the_same_with_and_without_population(digits_data_dir, digits_teacher_dir,
                                                       tmp_path):
  """Long enough (40 steps, lr 0.2) for rounding differences to change test predictions."""
  config = member_config(digits_data_dir, digits_teacher_dir, train_steps=40,
                         **{'optimizer.learning_rate': 0.2})
  results, tables = {}, {}
  for mode in ('auto', 'off'):
    results[mode] = sweep.run_grid(config, str(tmp_path / mode), ['kd', 'oracle_kd'], [0, 1],
                                   population=mode, mesh=one_device())
    tables[mode] = sweep.markdown(sweep.summarize(results[mode], 'kd'), 'kd')
  assert (tmp_path / 'auto' / 'populations').is_dir()
  assert not (tmp_path / 'off' / 'populations').exists()
  assert results['auto'] == results['off']
  assert tables['auto'] == tables['off']
  assert '| oracle_kd |' in tables['auto']


def test_gamma_search_is_one_population(digits_data_dir, digits_teacher_dir, tmp_path):
  config = member_config(digits_data_dir, digits_teacher_dir)
  names = sweep.with_gammas(['kd', 'oracle_kd'], [1.0, 5.0])
  results = sweep.run_grid(config, str(tmp_path), names, [0], mesh=one_device())
  assert [r['gamma'] for name in names for r in results[name]] == [None, 1.0, 5.0]
  assert len(list((tmp_path / 'populations').iterdir())) == 1
  saved = json.loads((tmp_path / 'oracle_kd_gamma5_seed0' / 'config.json').read_text())
  assert saved['oracle']['gamma'] == 5.0 and saved['oracle']['enabled']
  # γ changes the teacher's x*, so the oracle members differ from each other and from KD.
  finals = [results[name][0]['final_train_loss'] for name in names]
  assert len(set(finals)) == 3
