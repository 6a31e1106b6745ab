"""Exports a student (or any teacher) as a PyTorch state_dict: `.safetensors` or `.pth`.

    python -m oracle_jax.export SOURCE OUT [--member=NAME]

SOURCE: a run's workdir (its final student; `--member` picks one run of a sweep or of the
offline default, e.g. `oracle_kd_seed0`), a model checkpoint directory, a `.pth` or
`.safetensors` file (with `--model` and `--num_classes`) or `zoo:NAME`. OUT: `.safetensors`
(no torch needed) or `.pth`/`.pt` (`torch.load(weights_only=True)` reads it; needs torch).
Names and layouts are those of the PyTorch model the Flax one mirrors, float32, every
BatchNorm with its `num_batches_tracked` (the training steps behind the weights, or the
source file's own counts), so `load_state_dict(strict=True)` takes it. `OUT.json` beside
it records the model, dataset, normalisation, input size, the run's results and OUT's SHA-256.
"""
import argparse
import dataclasses
import hashlib
import io
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from oracle_jax import checkpoints, data, errors, fileio, metrics_io, models
from oracle_jax.interop import safetensors_reader, torch_import, zoo

PTH_SUFFIXES = ('.pth', '.pt')
SUFFIXES = (safetensors_reader.SUFFIX, *PTH_SUFFIXES)


class ExportError(errors.UserError):
  """A source that cannot be exported, or an output that cannot be written."""


@dataclasses.dataclass(frozen=True)
class Model:
  variables: Any          # {'params', 'batch_stats'}
  name: str               # models.NAMES
  num_classes: int
  architecture: dict      # models.architecture (small_stem)
  dataset: Optional[str]
  num_batches_tracked: Any  # a count, or {BatchNorm name: count}
  figures: dict           # the run's results.json, or the checkpoint's meta
  source: str


# ----------------------------------------------------------------------------- sources

def _is_step_directory(directory):
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _runs_in(directory):
  return sorted(p.name for p in directory.iterdir() if (p / 'config.json').is_file())


def from_model_directory(directory, source=None):
  """A model checkpoint directory (a scratch run's `teacher/`, `torch_import`'s output)."""
  variables, meta = checkpoints.load_model(directory)
  meta = dict(meta)
  counts = meta.pop('num_batches_tracked', None)
  return Model(variables, meta['model'], meta['num_classes'], models.architecture(meta),
               meta.get('dataset'), meta.get('step', 0) if counts is None else counts,
               meta, source or str(directory))


def _restore_latest(directory, what):
  """`(step, state, meta)` of the newest training checkpoint in `directory`, as plain trees."""
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise ExportError(f'{what} holds no training checkpoint in {str(directory)!r}.')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return step, restored['state'], dict(restored['meta'] or {})


def _population_member(run_dir):
  """`(step, variables)` of a population member: its row of the stacked state of the
  population (`WORKDIR/populations/*`) whose checkpoint names it among its members."""
  populations = run_dir.parent / 'populations'
  for directory in sorted(populations.iterdir()) if populations.is_dir() else []:
    step, state, meta = _restore_latest(directory / 'checkpoints', 'The population')
    if run_dir.name in meta.get('members', ()):
      i = meta['members'].index(run_dir.name)
      return step, jax.tree.map(lambda a: a[i], {k: state[k] for k in ('params', 'batch_stats')})
  raise ExportError(f'Found no final model of run {str(run_dir)!r}: it has no checkpoints/ '
                    f'and no population checkpoint in {str(populations)!r} names it (one '
                    'written before populations recorded their members\' names cannot say '
                    f'which row is this run; export its best model instead: {str(run_dir / "best")!r}).')


def from_run(run_dir):
  """The final student of the run in `run_dir` (a run of its own or a population member)."""
  config = fileio.read_json(run_dir / 'config.json', 'config of the run')
  if not (run_dir / 'results.json').is_file():
    raise ExportError(f'The run in {str(run_dir)!r} has not finished (no results.json): '
                      'rerun its command to finish it, then export.')
  results = fileio.read_json(run_dir / 'results.json', 'results of the run')
  if _is_step_directory(run_dir / 'checkpoints'):
    step, state, _ = _restore_latest(run_dir / 'checkpoints', 'The run')
    variables = {k: state[k] for k in ('params', 'batch_stats')}
  elif _is_step_directory(run_dir / 'teacher'):  # a population's scratch member
    model = from_model_directory(run_dir / 'teacher')
    step, variables = model.num_batches_tracked, model.variables
  else:
    step, variables = _population_member(run_dir)
  if step != results.get('steps'):
    raise ExportError(f'The newest checkpoint of {str(run_dir)!r} is step {step}, but the run '
                      f'finished at step {results.get("steps")}; its final model is gone.')
  student, dataset = config['student'], config['dataset']
  num_classes = (len(results['class_names']) if results.get('class_names')
                 else data.dataset_spec(dataset).num_classes)
  return Model(variables, student['model'], num_classes, models.architecture(student),
               dataset, int(step), results, str(run_dir))


def from_workdir(workdir, member=None):
  """A run's workdir → its final student; a sweep's (or the offline default's) → the
  student of run `member`; a model checkpoint directory → its model."""
  runs = _runs_in(workdir)
  if member:
    if member not in runs:
      raise ExportError(f'{str(workdir)!r} holds no run {member!r}; its runs: '
                        f'{", ".join(runs) or "none"}.')
    return from_run(workdir / member)
  if (workdir / 'config.json').is_file():
    return from_run(workdir)
  if runs:
    raise ExportError(f'{str(workdir)!r} holds {len(runs)} runs; choose one with '
                      f'--member=NAME: {", ".join(runs)}.')
  if _is_step_directory(workdir):
    return from_model_directory(workdir)
  raise ExportError(f'{str(workdir)!r} is neither a run\'s workdir nor a model checkpoint '
                    'directory.')


def from_file(path, model_name, num_classes, architecture, dataset):
  """A .pth or .safetensors file of model `model_name`."""
  if not model_name or not num_classes:
    raise ExportError(f'Exporting the file {path!r} needs --model and --num_classes (the '
                      'architecture and class count it holds).')
  variables, counts = torch_import.read_model(path, model_name, num_classes, **architecture)
  return Model(variables, model_name, num_classes, architecture, dataset, counts, {}, path)


def load_source(source, member=None, model_name=None, num_classes=None, architecture=None,
                dataset=None):
  """The `Model` that SOURCE names (see the module docstring)."""
  if member and (source.startswith(zoo.PREFIX) or fileio.path(source).is_file()):
    raise ExportError(f'--member picks a run of a sweep\'s workdir; {source!r} is not one.')
  if source.startswith(zoo.PREFIX):
    return from_model_directory(fileio.path(zoo.resolve(source)), source)
  path = fileio.path(source)
  if path.is_file():
    return from_file(source, model_name, num_classes, architecture or {}, dataset)
  if path.is_dir():
    return from_workdir(path, member)
  raise ExportError(f'{source!r} does not exist: give a run\'s workdir, a model checkpoint '
                    'directory, a .pth or .safetensors file, or zoo:NAME.')


# ----------------------------------------------------------------------------- output

def state_dict(model: Model):
  """The PyTorch state_dict of `model`: float32 weights and statistics, int64 counts."""
  out = torch_import.to_state_dict(model.variables, model.num_batches_tracked)
  tensors = {}
  with metrics_io.progress_bar(len(out), 'tensor', desc='converting', leave=False) as bar:
    for k, v in out.items():
      tensors[k] = np.array(v, np.int64 if k.endswith('num_batches_tracked') else np.float32,
                            order='C')
      bar.update()
  return tensors


def _pth_bytes(tensors):
  import torch  # pylint: disable=g-import-not-at-top  (only .pth needs it)
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, buffer)
  return buffer.getvalue()


def _safetensors_bytes(tensors, model):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  return safetensors.numpy.save(tensors, metadata={
      'format': 'pt', 'model': model.name, 'num_classes': str(model.num_classes)})


def check_output(out):
  """Refuses an OUT of another kind, or a .pth without torch, before any work is done."""
  if not str(out).lower().endswith(SUFFIXES):
    raise ExportError(f'OUT {str(out)!r} must end in {" or ".join(SUFFIXES)}.')
  if str(out).lower().endswith(PTH_SUFFIXES):
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise ExportError(f'Writing {str(out)!r} needs PyTorch (`pip install torch`); or '
                        'export to a .safetensors file, which needs no torch.') from None


def pytorch_model(model: Model, in_channels):
  """The PyTorch model that takes the state_dict, in words."""
  if model.name in models.IMAGENET_MODELS:
    text = f'torchvision.models.{model.name}(num_classes={model.num_classes})'
    if model.architecture.get('small_stem'):
      text += (', with conv1 = Conv2d(in, 64, 3, stride=1, padding=1, bias=False) and '
               'maxpool = Identity()')
  else:
    file = 'wrn.py' if model.name.startswith('wrn') else 'resnet.py'
    text = (f'RepDistiller / official oracle-KD models/{file}: {model.name}'
            f'(num_classes={model.num_classes})')
  if in_channels != 3:
    text += f', its first conv taking {in_channels} input channel(s)'
  return text


def data_record(model: Model):
  """The model's input size, normalisation (and class names): as its run or checkpoint
  recorded them (a folder dataset's exist nowhere else), else its built-in dataset's."""
  if 'data_mean' in model.figures:
    return {k: model.figures[k] for k in ('image_size', 'data_mean', 'data_std', 'class_names')
            if k in model.figures}
  if model.dataset and not data.is_folder(model.dataset):
    return data.record(data.dataset_spec(model.dataset))
  return {}


def record(model: Model, tensors, out, blob):
  """The JSON written beside OUT."""
  in_channels = tensors['conv1.weight'].shape[1]
  inputs = data_record(model)
  counts = sorted({int(v) for k, v in tensors.items() if k.endswith('num_batches_tracked')})
  return dict(
      file=fileio.path(out).name, sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob),
      format='safetensors' if str(out).lower().endswith(safetensors_reader.SUFFIX) else 'pth',
      model=model.name, architecture=model.architecture, num_classes=model.num_classes,
      pytorch_model=pytorch_model(model, in_channels), dtype='float32',
      dataset=model.dataset,
      input_size=[in_channels, *inputs['image_size']] if inputs else None,
      mean=inputs.get('data_mean'), std=inputs.get('data_std'),
      normalize='x = (pixel / 255 - mean) / std per channel, NCHW float32' if inputs else None,
      class_names=inputs.get('class_names'),
      num_batches_tracked=counts[0] if len(counts) == 1 else counts,
      source=model.source, results=model.figures)


def export(model: Model, out):
  """Writes `model`'s state_dict to OUT and its record to OUT.json; returns the record."""
  check_output(out)
  tensors = state_dict(model)
  blob = (_safetensors_bytes(tensors, model)
          if str(out).lower().endswith(safetensors_reader.SUFFIX) else _pth_bytes(tensors))
  info = record(model, tensors, out, blob)
  fileio.write_bytes(out, blob)
  fileio.write_json(f'{out}.json', info)
  return info


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m oracle_jax.export',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('source', help="a run's workdir, a model checkpoint directory, a .pth "
                      'or .safetensors file, or zoo:NAME')
  parser.add_argument('out', help='the file to write: .safetensors, .pth or .pt')
  parser.add_argument('--member', help="the run of a sweep's workdir, e.g. oracle_kd_seed0")
  parser.add_argument('--model', choices=models.NAMES, help='a .pth/.safetensors SOURCE: '
                      'its architecture')
  parser.add_argument('--num_classes', type=int, help='a .pth/.safetensors SOURCE: its classes')
  parser.add_argument('--small_stem', action='store_true', help='ImageNet ResNets: 3x3 stem')
  parser.add_argument('--dataset', help='a SOURCE that names none: its dataset (for the '
                      "JSON's normalisation)")
  args = parser.parse_args(argv)
  try:
    if args.dataset:
      data.dataset_spec(args.dataset)
    check_output(args.out)
    model = load_source(args.source, args.member, args.model, args.num_classes,
                        models.architecture(vars(args)), args.dataset)
    if args.dataset and model.dataset and args.dataset != model.dataset:
      raise ExportError(f'{args.source!r} is a {model.dataset} model, not {args.dataset}; '
                        'drop --dataset.')
    model = dataclasses.replace(model, dataset=model.dataset or args.dataset)
    info = export(model, args.out)
  except errors.UserError as e:  # anything else is a bug: keep its traceback
    print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
    return 1
  print(f'Wrote {args.out} ({info["model"]}, {info["num_classes"]} classes, SHA-256 '
        f'{info["sha256"][:16]}…) and {args.out}.json')
  return 0
