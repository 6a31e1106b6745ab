"""Fine-tuning (`config.init_checkpoint`): a new run's network starts from a checkpoint's
tensors bit for bit, a classifier of another class count from the seed's own, any other
mismatch is one line and writes nothing, and a resumed run never reads it.

On the digits from the session's resnet8 teacher, with the programs the other digits tests
compile (a resnet8 scratch run, batch 16, eval batch 64, 4 steps).
"""
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
from helpers import digits_config, final_params

from oracle_jax import checkpoints, errors, finetune, parallel, population, torch_import, train
from oracle_jax import validation

STEPS = 4
FC = ('params', 'fc')


def config_from(data_dir, init_checkpoint, **overrides):
  return digits_config(data_dir, method='scratch', train_steps=STEPS,
                       init_checkpoint=str(init_checkpoint), **overrides)


@pytest.fixture(scope='module')
def saved(digits_teacher_dir):
  return checkpoints.load_model(digits_teacher_dir)[0]


@pytest.fixture(scope='module')
def files(saved, tmp_path_factory):
  """The teacher as PyTorch saves it (a .pth of a torch model with the official names, its
  BatchNorms' num_batches_tracked included) and as a 7-class .safetensors (its head cut)."""
  torch = pytest.importorskip('torch')
  import torch_models  # pylint: disable=g-import-not-at-top  (needs torch)
  root = tmp_path_factory.mktemp('finetune')
  net = torch_models.create('resnet8', 10, in_channels=1)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in torch_import.to_state_dict(
      saved, num_batches_tracked=30).items()}, strict=True)
  torch.save(net.state_dict(), str(root / 'resnet8.pth'))
  seven = torch_import.to_state_dict(saved)
  seven['fc.weight'], seven['fc.bias'] = seven['fc.weight'][:7], seven['fc.bias'][:7]
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in seven.items()},
                              str(root / 'resnet8_7_classes.safetensors'))
  return root / 'resnet8.pth', root / 'resnet8_7_classes.safetensors'


@pytest.fixture(scope='module')
def run(digits_data_dir):
  return train.Run(config_from(digits_data_dir, ''), parallel.make_mesh())


def initial(run, config):
  """The variables a new run of `config` starts from (what `train.fit` trains)."""
  return jax.device_get(train.SingleRun(run, config, {}).initial_state().variables())


def split_head(variables):
  """(the classifier's tensors, every other tensor)."""
  body = {c: {k: v for k, v in variables[c].items() if (c, k) != FC} for c in variables}
  return variables['params']['fc'], body


def assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_new_run_starts_from_every_kind_of_checkpoint(run, digits_data_dir,
                                                        digits_teacher_dir, saved, files):
  pth, _ = files
  workdir = os.path.dirname(digits_teacher_dir)  # a scratch run's workdir: its teacher/
  for source in (digits_teacher_dir, workdir, pth):
    assert_equal(initial(run, config_from(digits_data_dir, source)), saved)
  assert train.plan(config_from(digits_data_dir, pth), run)['init_checkpoint'] == str(pth)
  fresh = jax.device_get(run.init_state(0).variables())
  assert not np.array_equal(fresh['params']['conv1']['kernel'],
                            saved['params']['conv1']['kernel'])


def test_another_class_count_gets_a_fresh_classifier(run, digits_data_dir, saved, files,
                                                     caplog):
  """7 classes into the digits' 10, alone and as a population of two seeds."""
  _, seven = files
  config = config_from(digits_data_dir, seven)
  with caplog.at_level('WARNING'):
    head, body = split_head(initial(run, config))
  assert (f"init_checkpoint '{seven}' has 7 classes, the dataset 10: its classifier (fc) is "
          're-initialised') in caplog.text
  assert_equal(body, split_head(saved)[1])
  assert_equal(head, split_head(jax.device_get(run.init_state(0).variables()))[0])
  members = lambda source: [population.Member(
      f'seed{s}', config_from(digits_data_dir, source, seed=s), None) for s in (0, 1)]
  stacked = population.fetch(population.Population(members(seven)).initial_state().variables())
  for i, seed in enumerate((0, 1)):
    head, body = split_head(population.unstack(stacked, i))
    assert_equal(body, split_head(saved)[1])
    assert_equal(head, split_head(jax.device_get(run.init_state(seed).variables()))[0])
  assert not np.array_equal(*[population.unstack(stacked, i)['params']['fc']['kernel']
                              for i in (0, 1)])
  # A resuming population only builds the target to restore onto: nothing is read.
  resuming = population.Population(members('/nonexistent/checkpoint'))
  assert_equal(population.fetch(resuming.initial_state(resuming=True).variables()),
               population.stack([jax.device_get(run.init_state(s).variables()) for s in (0, 1)]))


def one_line_error(error_type, config, workdir, match):
  with pytest.raises(error_type, match=match) as e:
    train.train_and_evaluate(config, str(workdir))
  assert '\n' not in str(e.value) and isinstance(e.value, errors.UserError)
  assert not workdir.exists()  # failed before anything was written


def test_what_does_not_fit_is_one_line_and_writes_nothing(digits_data_dir, digits_teacher_dir,
                                                          files, tmp_path):
  pth, _ = files
  resnet14 = lambda source: config_from(digits_data_dir, source, **{'student.model': 'resnet14'})
  with pytest.raises(finetune.InitCheckpointError):  # --dry_run reads it as a run would
    train.plan(resnet14(digits_teacher_dir), train.prepare(resnet14(digits_teacher_dir))[0])
  one_line_error(finetune.InitCheckpointError, resnet14(digits_teacher_dir), tmp_path / 'a',
                 r"init_checkpoint '.*teacher' \(a resnet8\) does not fit "
                 r"student.model='resnet14': \d+ tensor\(s\) missing from it, first "
                 r"\['batch_stats'\]\['layer1_1'\]\['bn1'\]\['mean'\]\. Set student.model")
  one_line_error(torch_import.CheckpointMismatchError, resnet14(pth), tmp_path / 'b',
                 r"resnet8.pth: The checkpoint does not match model 'resnet14': \d+ missing "
                 r"key\(s\), first 'layer1\.1\.")
  one_line_error(errors.CheckpointNotFoundError, config_from(digits_data_dir, tmp_path / 'x'),
                 tmp_path / 'c', r"init_checkpoint '.*x' does not exist\. Point init_checkpoint")
  one_line_error(validation.ConfigError, config_from(digits_data_dir, 'zoo:official/resnet'),
                 tmp_path / 'd', r"init_checkpoint 'zoo:official/resnet' names no zoo model")


def test_overwrite_never_deletes_the_init_checkpoint(digits_data_dir, digits_teacher_dir,
                                                     tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(digits_teacher_dir, workdir / 'teacher')
  (workdir / 'config.json').write_text('{"seed": 7}')  # a run of another config
  with pytest.raises(validation.ConfigError, match=r"would delete '.*run/teacher', the "
                                                   r'init_checkpoint this run reads'):
    train.train_and_evaluate(config_from(digits_data_dir, workdir, overwrite=True), str(workdir))
  assert checkpoints.load_model(workdir / 'teacher')[1]['model'] == 'resnet8'


def test_a_resumed_run_never_reads_it(digits_data_dir, files, tmp_path):
  pth = shutil.copy(files[0], tmp_path / 'start.pth')
  config = config_from(digits_data_dir, pth, checkpoint_every_steps=2)
  workdir = tmp_path / 'run'
  results = train.train_and_evaluate(config, str(workdir))
  assert results['init_checkpoint'] == str(pth) and results['steps'] == STEPS
  # Its weights were used: 4 steps from scratch score about 0.17 (chance 0.1).
  assert results['final_top1'] > 0.4
  uninterrupted = final_params(config, str(workdir))
  (workdir / 'checkpoints' / str(STEPS)).rename(tmp_path / 'moved')  # back to step 2
  (tmp_path / 'start.pth').unlink()  # reading it now would fail
  train.train_and_evaluate(config, str(workdir))
  assert_equal(final_params(config, str(workdir)), uninterrupted)
