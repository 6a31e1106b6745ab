"""Crash safety and clear errors: preemption, corrupt checkpoints, non-finite losses, and
every bad input explained in one sentence with nothing written."""
import json
import os
import signal
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from conftest import REFERENCE_DIR
from helpers import REPO, digits_config, final_params, main_command, saved_steps, wait_until

from oracle_jax import checkpoints, data, errors, metrics_io, train, validation


def test_sigterm_saves_then_resume_is_exact(digits_data_dir, tmp_path):
  overrides = ['--config.train_steps=30', '--config.checkpoint_every_steps=1000']
  workdir = tmp_path / 'preempted'
  proc = subprocess.Popen(main_command(workdir, digits_data_dir, *overrides),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = workdir / 'metrics.jsonl'
  logged = lambda: [json.loads(line)['step'] for line in
                    (metrics.read_text().splitlines() if metrics.exists() else [])]
  wait_until(proc, lambda: len(logged()) >= 2)  # mid-training, whatever the machine's speed
  signalled_after = max(logged())  # the run had trained at least this far
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err.decode()[-2000:]
  assert not (workdir / 'run.lock').exists()  # released on the way out
  saved = saved_steps(workdir / 'checkpoints')
  # One checkpoint, at the signal (the periodic one would be at step 1000), never before it.
  assert len(saved) == 1 and signalled_after <= saved[0] < 30, (saved, signalled_after)
  subprocess.run(main_command(workdir, digits_data_dir, *overrides), check=True, capture_output=True)
  config = digits_config(digits_data_dir, method='scratch', train_steps=30, checkpoint_every_steps=1000)
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  jax.tree.map(np.testing.assert_array_equal, final_params(config, str(workdir)),
               final_params(config, str(tmp_path / 'straight')))


def test_unreadable_checkpoints_never_restart_silently(digits_data_dir, tmp_path):
  config = digits_config(digits_data_dir, method='scratch', train_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  for f in (tmp_path / 'checkpoints').rglob('*'):
    if f.is_file() and 'state' in f.parts:
      f.write_bytes(b'x')
  with pytest.raises(checkpoints.UnreadableCheckpointsError, match='refusing to start from scratch'):
    train.train_and_evaluate(config, str(tmp_path))
  assert saved_steps(tmp_path / 'checkpoints') == [2]  # nothing moved: a rerun refuses too


@pytest.mark.parametrize('override', [{'optimizer.learning_rate': 1e6},
                                      {'ce_weight': 1e38, 'method': 'kd'}])
def test_non_finite_loss_stops_and_keeps_last_good(digits_data_dir, digits_teacher_dir, tmp_path, override):
  config = digits_config(digits_data_dir, train_steps=40, **{'teacher.checkpoint': digits_teacher_dir,
                                                      'teacher.model': 'resnet8',
                                                      'method': 'scratch', **override})
  with pytest.raises(metrics_io.NonFiniteLossError,
                     match=r'Non-finite (loss|grad_norm) = (nan|inf|-inf).* at step \d+; stopping'):
    train.train_and_evaluate(config, str(tmp_path))
  ckpt = tmp_path / 'checkpoints'
  if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
    params = final_params(config, str(tmp_path))
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(params))


def test_disk_full_while_saving_keeps_previous(digits_data_dir, tmp_path, monkeypatch):
  config = digits_config(digits_data_dir, method='scratch', train_steps=6)
  original = checkpoints.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= 4:
      raise OSError(28, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, 'save', save)
  with pytest.raises(checkpoints.CheckpointSaveError,
                     match=r'Saving checkpoint step 4 failed \(No space left on device\); the '
                           r'previous checkpoint \(step 2\) is intact'):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  run = train.Run(config, jax.sharding.Mesh(np.array(jax.devices()), ('data',)))
  state, _ = checkpoints.TrainCheckpoints(str(tmp_path / 'checkpoints')).restore_latest(
      run.init_state(0))
  assert int(state.step) == 2


# --------------------------------------------------------------------------- bad input

def _bad_cases(digits_data_dir, digits_teacher_dir, tmp_path):
  pth = str(REFERENCE_DIR / 'torch' / 'cifar100_resnet20_state_dict.pth')
  not_pth = tmp_path / 'notes.pth'
  not_pth.write_text('not a checkpoint')
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  kd = {'method': 'kd', 'teacher.checkpoint': digits_teacher_dir, 'teacher.model': 'resnet8'}
  return [
      ({'oracle.gamma': -0.5}, r'oracle.gamma must be a number >= 0 and finite, got -0.5'),
      ({'temperature': 0.0}, r'temperature must be a number > 0 and finite, got 0.0'),
      ({'oracle.steps': 0}, r'oracle.steps must be an integer >= 1, got 0'),
      ({'batch_size': 12}, r'batch_size=12 is not divisible by the 8 devices; use a multiple of 8'),
      ({'eval_batch_size': 20}, r'batch_size=20 is not divisible by the 8 devices'),
      ({'student.model': 'resnet21'}, r"Unknown model 'resnet21'; choose one of: .*resnet20"),
      ({'dataset': 'mnist'}, r"Unknown dataset 'mnist'; known datasets: .*digits"),
      ({'method': 'distill'}, r"Unknown method 'distill'; choose one of"),
      ({'train_steps': -1}, r'train_steps must be an integer >= 0'),
      ({'train_steps': 0, 'num_epochs': 0.0}, r'num_epochs must be > 0 when train_steps is 0'),
      ({'dtype': 'float16'}, r"dtype must be one of \('float32', 'bfloat16'\)"),
      ({'conv_impl': 'winograd'}, r"conv_impl must be one of \('auto', 'default', 'chunked', 'cpu', 'patch'\)"),
      ({'optimizer.learning_rate': 0.0}, r'optimizer.learning_rate must be a number > 0'),
      ({'method': 'kd'}, r'needs a teacher: set --config.teacher.checkpoint'),
      ({**kd, 'teacher.checkpoint': str(tmp_path / 'absent')},
       r"Teacher checkpoint '.*absent' does not exist. Train a teacher with"),
      ({**kd, 'teacher.model': 'resnet20'},
       r"holds a resnet8 but teacher.model is 'resnet20'; set teacher.model=resnet8"),
      ({**kd, 'teacher.model': 'resnet32', 'teacher.checkpoint': pth},
       r"does not match model 'resnet32': .*missing key\(s\), first 'layer1.3.bn1.running_mean'"),
      ({**kd, 'teacher.model': 'resnet20', 'teacher.checkpoint': pth},
       r'The checkpoint has 100 classes .* num_classes=10'),
      ({**kd, 'teacher.checkpoint': str(not_pth)}, r'is not a PyTorch checkpoint'),
      ({'dataset': 'cifar100'}, r"(?s)cifar100.*download_and_prepare"),
      ({'dataset': 'tiny_imagenet'}, r'tiny-imagenet-200.zip'),
  ], a_file


def test_bad_inputs_give_clear_errors_and_write_nothing(digits_data_dir, digits_teacher_dir, tmp_path):
  cases, a_file = _bad_cases(digits_data_dir, digits_teacher_dir, tmp_path)
  for i, (overrides, message) in enumerate(cases):
    workdir = tmp_path / f'run{i}'
    config = digits_config(digits_data_dir, **{'method': 'scratch', **overrides})
    with pytest.raises(errors.UserError, match=message):
      train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists(), overrides
  with pytest.raises(validation.ConfigError, match=r'is not writable .*pass a --workdir'):
    train.train_and_evaluate(digits_config(digits_data_dir, method='scratch'), str(a_file / 'run'))


def test_workdir_of_another_config_is_refused(digits_data_dir, tmp_path):
  train.train_and_evaluate(digits_config(digits_data_dir, method='scratch', train_steps=2), str(tmp_path))
  other = digits_config(digits_data_dir, method='scratch', train_steps=2, seed=3)
  with pytest.raises(validation.ConfigError, match=r'holds a run of a different config '
                                                   r'\(differs in: seed\).*overwrite=True'):
    train.train_and_evaluate(other, str(tmp_path))
  other.overwrite = True
  assert train.train_and_evaluate(other, str(tmp_path))['seed'] == 3


def test_malformed_tiny_imagenet_zip(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  with zipfile.ZipFile(manual / 'tiny-imagenet-200.zip', 'w') as z:
    z.writestr('tiny-imagenet-200/readme.txt', 'no wnids here')
  with pytest.raises(ValueError, match='wnids.txt'):
    data.num_examples(data.dataset_spec('tiny_imagenet'), str(tmp_path), 'train')


def test_wrong_images_and_labels_for_the_model():
  spec = data.dataset_spec('digits')
  good = {'image': np.zeros((4, 8, 8, 1), np.uint8), 'label': np.arange(4, dtype=np.int32)}
  validation.check_batch(good, spec)
  with pytest.raises(validation.ConfigError, match=r'have shape \(4, 8, 8\) but the models expect'):
    validation.check_batch({**good, 'image': np.zeros((4, 8, 8), np.uint8)}, spec)
  with pytest.raises(validation.ConfigError, match=r'have shape \(4, 32, 32, 3\)'):
    validation.check_batch({**good, 'image': np.zeros((4, 32, 32, 3), np.uint8)}, spec)
  with pytest.raises(validation.ConfigError, match=r'Label \[12\] is outside \[0, 10\)'):
    validation.check_batch({**good, 'label': np.array([0, 1, 12, 3], np.int32)}, spec)


def test_command_line_errors_and_dry_run(digits_data_dir, digits_teacher_dir, tmp_path):
  main = [sys.executable, os.path.join(REPO, 'launch', 'main.py')]
  default = os.path.join(REPO, 'configs', 'default.py')
  wrong_type = subprocess.run(main + [f'--workdir={tmp_path}/a', '--config.batch_size=abc'],
                              capture_output=True, text=True)
  assert wrong_type.returncode != 0 and 'batch_size' in wrong_type.stderr
  dry = subprocess.run(main + [f'--workdir={tmp_path}/b', '--dry_run', f'--config={default}',
                               f'--config.data_dir={digits_data_dir}', '--config.method=kd',
                               f'--config.teacher.checkpoint={digits_teacher_dir}',
                               '--config.teacher.model=resnet8'],
                       capture_output=True, text=True, timeout=300)
  assert dry.returncode == 0, dry.stderr[-2000:]
  assert '"steps": 300' in dry.stdout and '"global_batch": 64' in dry.stdout
  assert '"teacher_params": 77754' in dry.stdout or '"teacher_params"' in dry.stdout
  assert not (tmp_path / 'b').exists()
  bad = subprocess.run(main + [f'--workdir={tmp_path}/c', '--dry_run', f'--config={default}',
                               f'--config.data_dir={digits_data_dir}', '--config.oracle.gamma=-1'],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and 'error: oracle.gamma must be a number >= 0' in bad.stderr
  assert 'Traceback' not in bad.stderr
