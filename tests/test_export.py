"""Students out to PyTorch: `python -m oracle_jax.export`, checked with torch itself."""
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch
import torch_models
from conftest import REFERENCE_DIR
from helpers import REPO, RecordedBars, digits_config

from oracle_jax import checkpoints, data, models, sweep
from oracle_jax.interop import export, safetensors_reader, torch_import

TEST_CHECKPOINTS = [  # (file, model, classes)
    ('cifar100_resnet20_state_dict.pth', 'resnet20', 100),
    ('cifar100_resnet32_state_dict.pth', 'resnet32', 100),
    ('cifar10_resnet20_pickled_module.pth', 'resnet20', 10),
]
FORMATS = ('.safetensors', '.pth')


def read_back(path):
  """OUT as PyTorch's own readers give it."""
  if str(path).endswith('.safetensors'):
    return safetensors.numpy.load_file(str(path))
  return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def assert_bitwise_equal(ours, original):
  assert sorted(ours) == sorted(original)
  for name, tensor in original.items():
    assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape, name
    assert ours[name].tobytes() == tensor.tobytes(), name


@pytest.mark.parametrize('suffix', FORMATS)
@pytest.mark.parametrize('filename,model,classes', TEST_CHECKPOINTS)
def test_imported_and_exported_again_is_the_original(filename, model, classes, suffix,
                                                     tmp_path):
  """.pth → orbax (`torch_import`) → OUT: every tensor bit for bit, counts included."""
  original = torch_import.read_state_dict(str(REFERENCE_DIR / 'torch' / filename))
  torch_import.convert_file(str(REFERENCE_DIR / 'torch' / filename), tmp_path / 'orbax',
                            model, classes)
  out = tmp_path / f'out{suffix}'
  export.export(export.load_source(str(tmp_path / 'orbax')), out)
  assert_bitwise_equal(read_back(out), original)
  assert_bitwise_equal(torch_import.read_weights(str(out)), original)  # and read back here


def test_file_to_file_and_back_in(tmp_path, monkeypatch):
  """A .pth exported straight to .safetensors, and that imported again: the same. A bar
  counts the tensors converted."""
  pth = REFERENCE_DIR / 'torch' / 'cifar10_resnet20_pickled_module.pth'
  out = tmp_path / 'r20.safetensors'
  recorded = RecordedBars(monkeypatch)
  assert export.main([str(pth), str(out), '--model=resnet20', '--num_classes=10',
                      '--dataset=cifar10']) == 0
  assert_bitwise_equal(read_back(out), torch_import.read_state_dict(str(pth)))
  tensors = len(read_back(out))
  assert recorded.bars == [dict(desc='converting', unit='tensor', total=tensors,
                                updates=[1] * tensors)]
  info = json.loads((tmp_path / 'r20.safetensors.json').read_text())
  assert (info['dataset'], info['input_size'], info['num_batches_tracked']) == (
      'cifar10', [3, 32, 32], 96186)
  assert safetensors_reader.read(out)[1] == {'format': 'pt', 'model': 'resnet20',
                                             'num_classes': '10'}
  jax.tree.map(np.testing.assert_array_equal, torch_import.load(str(out), 'resnet20', 10),
               torch_import.load(str(pth), 'resnet20', 10))


def strict_torch_model(state_dict, name, classes, in_channels, **architecture):
  net = torch_models.create(name, classes, in_channels, **architecture)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  return net.eval()


def max_relative_difference(ours, theirs):
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize('name,architecture', [
    ('resnet8x4', {}), ('wrn_16_2', {}), ('resnet18', {'small_stem': True}),
    ('resnet50', {})])
def test_every_family_loads_strictly_and_computes_the_same(name, architecture):
  """Random weights and running statistics of each family: strict load, same logits."""
  model = models.create(name, 10, **architecture)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
                           if len(s.shape) == 1 else
                           (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes)
  exported = export.state_dict(export.Model(variables, name, 10, architecture, None, 7, {}, ''))
  net = strict_torch_model(exported, name, 10, 3, **architecture)
  assert all(int(b) == 7 for n, b in net.state_dict().items() if 'num_batches' in n)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  assert max_relative_difference(model.apply(variables, x), theirs) <= 1e-4


@pytest.fixture(name='exported_student', scope='module')
def _exported_student(digits_teacher, tmp_path_factory):
  """The session's scratch digits run (30 steps), exported by the command, as a user would."""
  workdir = pathlib.Path(digits_teacher[0]).parent
  out = tmp_path_factory.mktemp('export') / 'student.pth'
  done = subprocess.run([sys.executable, '-m', 'oracle_jax.export', str(workdir), str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  return workdir, out, done


def test_export_command(exported_student):
  workdir, out, done = exported_student
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().startswith(f'Wrote {out} (resnet8, 10 classes, SHA-256 ')
  info = json.loads(pathlib.Path(f'{out}.json').read_text())
  results = json.loads((workdir / 'results.json').read_text())
  spec = data.dataset_spec('digits')
  assert info['sha256'] == hashlib.sha256(out.read_bytes()).hexdigest()
  assert info['bytes'] == out.stat().st_size
  assert (info['model'], info['num_classes'], info['dataset'], info['format']) == (
      'resnet8', 10, 'digits', 'pth')
  assert (info['mean'], info['std'], info['input_size']) == (
      list(spec.mean), list(spec.std), [1, 8, 8])
  assert info['results'] == results and info['num_batches_tracked'] == results['steps'] == 30
  assert info['source'] == str(workdir)


def test_exported_student_gives_the_same_logits_in_pytorch(exported_student, digits_data_dir):
  workdir, out, _ = exported_student
  info = json.loads(pathlib.Path(f'{out}.json').read_text())
  state_dict = read_back(out)
  net = strict_torch_model(state_dict, 'resnet8', 10, 1)
  spec = data.dataset_spec('digits')
  images = data.sources.load_split(spec, str(digits_data_dir), 'test')['image'][:128]
  mean, std = (np.asarray(info[k], np.float32)[:, None, None] for k in ('mean', 'std'))
  x = (images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255) - mean) / std
  with torch.no_grad():
    theirs = net(torch.from_numpy(x)).numpy()
  variables, _ = checkpoints.load_model(workdir / 'teacher')  # the same final model
  ours = models.create('resnet8', 10).apply(variables, data.normalize(images, spec))
  assert max_relative_difference(ours, theirs) <= 1e-4
  assert (np.argmax(ours, 1) == np.argmax(theirs, 1)).mean() >= 0.99


def test_population_member_and_errors(digits_teacher, digits_data_dir, tmp_path, capsys):
  """A sweep trained as one population: each member's row of the stacked state, by name."""
  config = digits_config(digits_data_dir, method='kd', train_steps=2,
                         **{'teacher.model': 'resnet8', 'teacher.checkpoint': digits_teacher[0]})
  names = ('kd', 'oracle_kd')
  sweep.run_grid(config, tmp_path / 'sweep', names, (0,))
  population, = (tmp_path / 'sweep' / 'populations').iterdir()
  with ocp.CheckpointManager(population / 'checkpoints') as manager:
    restored = manager.restore(2, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  stacked = restored['state']
  assert restored['meta']['members'] == [f'{name}_seed0' for name in names]  # rows by name
  rows = [torch_import.to_state_dict(jax.tree.map(lambda a, i=i: a[i], {
      k: stacked[k] for k in ('params', 'batch_stats')}), 2) for i in range(len(names))]
  assert not np.array_equal(rows[0]['fc.weight'], rows[1]['fc.weight'])
  for i, name in enumerate(names):
    out = tmp_path / f'{name}.safetensors'
    assert export.main([str(tmp_path / 'sweep'), str(out), f'--member={name}_seed0']) == 0
    assert_bitwise_equal(read_back(out), rows[i])
  capsys.readouterr()
  assert export.main([str(tmp_path / 'sweep'), str(tmp_path / 'x.safetensors')]) == 1
  assert export.main([str(tmp_path / 'sweep'), str(tmp_path / 'x.safetensors'),
                      '--member=dkd_seed0']) == 1
  err = capsys.readouterr().err.splitlines()
  assert err == [
      f"error: '{tmp_path / 'sweep'}' holds 2 runs; choose one with --member=NAME: kd_seed0, "
      'oracle_kd_seed0.',
      f"error: '{tmp_path / 'sweep'}' holds no run 'dkd_seed0'; its runs: kd_seed0, "
      'oracle_kd_seed0.']
  assert not (tmp_path / 'x.safetensors').exists()


@pytest.mark.parametrize('argv,message', [
    (['{pth}', '{tmp}/out.npz'], r"OUT '.*out.npz' must end in .safetensors or .pth or .pt"),
    (['{pth}', '{tmp}/out.safetensors'], 'needs --model and --num_classes'),
    (['{tmp}/absent', '{tmp}/out.pth'], "'.*absent' does not exist"),
    (['{pth}', '{tmp}/out.pth', '--member=kd_seed0'], '--member picks a run'),
    (['{pth}', '{tmp}/out.pth', '--model=resnet32', '--num_classes=10'], 'missing key'),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
  pth = REFERENCE_DIR / 'torch' / 'cifar10_resnet20_pickled_module.pth'
  argv = [a.format(pth=pth, tmp=tmp_path) for a in argv]
  assert export.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ')
  assert re.search(message, err), err
  assert not os.listdir(tmp_path)


def test_pth_without_torch_says_how(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  with pytest.raises(export.ExportError, match=r'needs PyTorch \(`pip install torch`\); or '
                                               r'export to a .safetensors file'):
    export.check_output(str(tmp_path / 'student.pth'))
  export.check_output(str(tmp_path / 'student.safetensors'))  # needs no torch


def test_a_torchvision_named_safetensors_file_is_a_resnet50_teacher(tmp_path):
  """timm's resnet50 files use torchvision's names: such a file (written by
  `safetensors.torch`, as timm writes them) is a teacher for resnet50."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = torch_models.create('resnet50', 10).eval()
  path = tmp_path / 'model.safetensors'
  safetensors.torch.save_file(net.state_dict(), str(path), metadata={'format': 'pt'})
  from oracle_jax import teachers  # pylint: disable=g-import-not-at-top
  variables = teachers.read(str(path), 'resnet50', 10)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = models.create('resnet50', 10).apply(jax.tree.map(jnp.asarray, variables), x)
  assert max_relative_difference(ours, theirs) <= 1e-4
  with pytest.raises(torch_import.CheckpointMismatchError, match='has 10 classes'):
    teachers.read(str(path), 'resnet50', 1000)
