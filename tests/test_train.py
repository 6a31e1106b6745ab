"""End to end: launch/main.py's training system on the digits data and on mock TFDS data."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REFERENCE_DIR
from helpers import (REPO, RecordedBars, assert_trees_close, digits_config, final_params,
                     main_command, saved_steps, wait_until)

from oracle_jax import checkpoints, conv, data, parallel, patch_conv, train

def test_scratch_run_keeps_a_teacher(digits_teacher):
  teacher_dir, results = digits_teacher
  assert results['steps'] == 30 and results['method'] == 'scratch'
  assert results['final_top1'] > 0.5  # 30 steps already learn digits well above 10 % chance
  variables, meta = checkpoints.load_model(teacher_dir)
  assert meta['model'] == 'resnet8' and meta['num_classes'] == 10
  assert set(variables) == {'params', 'batch_stats'}


@pytest.mark.parametrize('oracle', [False, True])
def test_distillation_run(digits_data_dir, digits_teacher, tmp_path, oracle, monkeypatch):
  teacher_dir, _ = digits_teacher
  before, _ = checkpoints.load_model(teacher_dir)
  config = digits_config(digits_data_dir, method='kd', **{'teacher.model': 'resnet8',
                                                   'teacher.checkpoint': teacher_dir,
                                                   'oracle.enabled': oracle})
  recorded = RecordedBars(monkeypatch)
  results = train.train_and_evaluate(config, str(tmp_path))
  # The bars: training moves at every one of its 6 steps; the student's evaluation (at the
  # last step) and the teacher's count the 540 test digits in batches of 64.
  assert recorded.named('train') == [dict(desc='train', unit='step', total=6, updates=[1] * 6)]
  digits = dict(unit='img', total=540, updates=[64] * 8 + [28])
  assert recorded.named('eval') == [dict(desc='eval', **digits)]
  assert recorded.named('teacher eval') == [dict(desc='teacher eval', **digits)]
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert on_disk == results
  assert {'final_top1', 'best_top1', 'final_train_loss', 'steps'} <= set(results)
  assert results['steps'] == 6 and results['oracle'] == oracle
  assert 0 <= results['final_top1'] <= results['best_top1'] <= 1
  assert 0.5 < results['teacher_top1'] <= 1  # the frozen teacher over the 540 test digits
  assert (results['oracle_top1'] is not None) == oracle
  if oracle:  # the oracle makes the teacher at least as right (γ = 5 here)
    assert results['oracle_top1'] >= results['teacher_top1']
  assert np.isfinite(results['final_train_loss'])
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_lines = [l for l in lines if 'train/loss' in l]
  assert [l['step'] for l in train_lines] == [2, 4, 6]
  perf = [l for l in lines if 'perf/steps_per_sec' in l]  # clu's ReportProgress estimate
  assert [l['step'] for l in perf] == [2, 4, 6]
  for l in perf:
    assert l['perf/steps_per_sec'] > 0
    assert l['perf/img_per_sec'] == pytest.approx(l['perf/steps_per_sec'] * 16)  # batch 16
  assert ('train/oracle_accuracy' in train_lines[0]) == oracle
  assert 'eval/top1' in lines[-1]
  after, _ = checkpoints.load_model(teacher_dir)
  jax.tree.map(np.testing.assert_array_equal, before, after)  # teacher untouched


def test_eight_devices_equal_one_device(digits_data_dir, digits_teacher, tmp_path):
  teacher_dir, _ = digits_teacher
  config = digits_config(digits_data_dir, method='kd', **{'teacher.model': 'resnet8',
                                                   'teacher.checkpoint': teacher_dir})
  one = parallel.make_mesh(jax.devices()[:1])
  eight = parallel.make_mesh(jax.devices())
  r1 = train.train_and_evaluate(config, str(tmp_path / 'one'), mesh=one)
  r8 = train.train_and_evaluate(config, str(tmp_path / 'eight'), mesh=eight)
  np.testing.assert_allclose(r1['final_train_loss'], r8['final_train_loss'], rtol=1e-5)
  assert_trees_close(final_params(config, str(tmp_path / 'one'), one),
                     final_params(config, str(tmp_path / 'eight'), eight), rtol=2e-4, atol=2e-5)


def test_same_seed_is_bit_identical(digits_data_dir, tmp_path):
  config = digits_config(digits_data_dir, method='scratch', train_steps=4)
  run = train.Run(config, parallel.make_mesh())  # compiled once; init and data are redone
  train.train_and_evaluate(config, str(tmp_path / 'a'), run=run)
  train.train_and_evaluate(config, str(tmp_path / 'b'), run=run)
  jax.tree.map(np.testing.assert_array_equal, final_params(config, str(tmp_path / 'a')),
               final_params(config, str(tmp_path / 'b')))


def test_sigkill_and_resume_equals_uninterrupted(digits_data_dir, tmp_path):
  overrides = ['--config.train_steps=24']
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen(main_command(workdir, digits_data_dir, *overrides),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = workdir / 'checkpoints'
  wait_until(proc, lambda: max(saved_steps(ckpt), default=0) >= 6)
  assert proc.poll() is None, 'the run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(saved_steps(ckpt))
  assert 6 <= killed_at < 24
  subprocess.run(main_command(workdir, digits_data_dir, *overrides), check=True, capture_output=True)
  config = digits_config(digits_data_dir, method='scratch', train_steps=24)
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  jax.tree.map(np.testing.assert_array_equal, final_params(config, str(workdir)),
               final_params(config, str(tmp_path / 'straight')))


def _run_main_expecting_error(args):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'main.py'), *args],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  return proc.stderr


def test_misspelt_config_key(tmp_path):
  err = _run_main_expecting_error([f'--workdir={tmp_path}', '--config.temprature=2'])
  assert 'temprature' in err and 'temperature' in err  # names the key and suggests the fix
  assert not os.listdir(tmp_path)


def test_missing_dataset_is_one_clear_error(tmp_path):
  err = _run_main_expecting_error([
      '--config=' + os.path.join(REPO, 'configs', 'cifar100_r56_r20.py'),
      f'--workdir={tmp_path / "run"}', f'--config.data_dir={tmp_path / "empty"}'])
  assert 'download_and_prepare' in err and str(tmp_path / 'empty') in err
  assert 'Traceback' not in err
  assert not (tmp_path / 'run').exists()


def test_teacher_class_count_mismatch(digits_data_dir, tmp_path):
  pth = REFERENCE_DIR / 'torch' / 'cifar100_resnet20_state_dict.pth'
  config = digits_config(digits_data_dir, method='kd', **{'teacher.model': 'resnet20',
                                                   'teacher.checkpoint': str(pth)})
  with pytest.raises(ValueError, match=r'checkpoint has 100 classes .* num_classes=10'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_auto_convolution_follows_the_mesh_and_image_size(digits_data_dir):
  """conv_impl='auto' (the default): on one CPU device patches × kernel for the 8×8
  digits, the chunked weight gradient for CIFAR-size images, both with XLA's
  multi-threaded CPU convolutions; XLA's own convolutions on several devices."""
  config = digits_config(digits_data_dir, method='kd', **{'teacher.checkpoint': 'unused'})
  assert config.conv_impl == 'auto'
  one = train.Run(config, parallel.make_mesh(jax.devices()[:1]))
  eight = train.Run(config, parallel.make_mesh(jax.devices()))
  assert one.compiler_options == conv.CPU_COMPILER_OPTIONS and eight.compiler_options == {}
  assert one.student.conv_impl is patch_conv.patch_conv is one.teacher.conv_impl
  assert eight.student.conv_impl is None and eight.teacher.conv_impl is None
  cifar_conv, _ = conv.choose('auto', 1, image_shape=data.dataset_spec('cifar10').image_shape)
  assert cifar_conv.func is conv.chunked_conv_general_dilated
  assert cifar_conv.keywords['pair_narrow']


def test_chunked_convolutions_train_like_the_default(digits_data_dir, tmp_path):
  """config.conv_impl='cpu' (chunked weight gradient, paired narrow convolutions) changes
  rounding only."""
  params = {}
  for impl in ('default', 'cpu'):
    config = digits_config(digits_data_dir, method='scratch', train_steps=4, conv_impl=impl)
    train.train_and_evaluate(config, str(tmp_path / impl))
    params[impl] = final_params(config, str(tmp_path / impl))
  assert_trees_close(params['default'], params['cpu'], rtol=1e-3, atol=1e-5)
