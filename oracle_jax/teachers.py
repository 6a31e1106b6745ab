"""Teachers: a config's `teacher` block and the dataset → the frozen model and its weights.

`teacher.checkpoint` names an orbax model checkpoint directory (or a run's workdir, whose
`teacher/` is used), a PyTorch `.pth` or a `.safetensors` file (converted by
`torch_import`) or a zoo teacher
`zoo:NAME` (`zoo.resolve`: fetched once into an orbax directory). Whichever it is, the
weights are checked against the configured architecture and the dataset's class count
before any work is done. `read_model` is the one reader of these sources, which
fine-tuning (`finetune`, `config.init_checkpoint`) shares.
"""
import jax
import numpy as np

from oracle_jax import checkpoints, errors, fileio, models
from oracle_jax.interop import torch_import, zoo

_NO_CHECKPOINT = ('teacher.checkpoint is empty: set it to a model checkpoint directory (e.g. '
                  'WORKDIR/teacher of a method=scratch run), a PyTorch .pth or a .safetensors '
                  'file.')
_NOT_FOUND = ('Train a teacher with --config.method=scratch (it is kept in WORKDIR/teacher) '
              'or import a PyTorch one with `python -m oracle_jax.torch_import IN.pth OUT_DIR '
              '--model=… --num_classes=…`.')


def load(config, spec, *, checkpoint=None, conv_impl=None):
  """`(model, variables)`: the configured teacher for dataset `spec`, its weights from
  `checkpoint` (default `config.teacher.checkpoint`); `conv_impl` from `conv.choose`."""
  model = models.create(config.teacher.model, spec.num_classes, conv_impl=conv_impl,
                        **models.architecture(config.teacher))
  return model, load_variables(config, spec, checkpoint=checkpoint)


def load_variables(config, spec, *, checkpoint=None):
  """The configured teacher's variables (host numpy) from `checkpoint` (default
  `config.teacher.checkpoint`), checked against its architecture and `spec`."""
  source = config.teacher.checkpoint if checkpoint is None else checkpoint
  return read(source, config.teacher.model, spec.num_classes, spec.image_shape[-1],
              **models.architecture(config.teacher))


def read(source: str, model_name: str, num_classes: int, in_channels: int = 3,
         **architecture):
  """Teacher variables from a model checkpoint directory, a run's workdir, a `.pth` or
  `.safetensors` file or `zoo:NAME`, checked against model `model_name` with
  `num_classes` classes."""
  if not source:
    raise checkpoints.TeacherCheckpointError(_NO_CHECKPOINT)
  what = f'Teacher checkpoint {source!r}'
  variables, meta = read_model(source, model_name, num_classes, what=what,
                               not_found=_NOT_FOUND, **architecture)
  _check_meta(meta, model_name, num_classes, what)
  check_variables(variables, models.abstract_variables(
      model_name, num_classes, in_channels, **architecture), what)
  return variables


def read_model(source: str, model_name: str, num_classes=None, *, what: str, not_found: str,
               **architecture):
  """`(variables, meta)` of the model checkpoint `source` names, unchecked: an orbax model
  checkpoint directory or a run's workdir (its `teacher/`) with the meta it records, a
  `.pth` or `.safetensors` file converted to `model_name` with `num_classes` classes (None:
  the file's own) and meta {}, or `zoo:NAME` (fetched once). A missing `source` raises
  CheckpointNotFoundError: `what` does not exist, then `not_found` (the fix)."""
  path = fileio.path(zoo.resolve(source))
  if path.is_file():
    return jax.tree.map(np.asarray, torch_import.load(str(path), model_name, num_classes,
                                                      **architecture)), {}
  if path.exists():
    return checkpoints.load_model(path / 'teacher' if (path / 'teacher').is_dir() else path)
  raise errors.CheckpointNotFoundError(f'{what} does not exist. {not_found}')


def _check_meta(meta, model_name, num_classes, what):
  if meta.get('model', model_name) != model_name:
    raise checkpoints.TeacherCheckpointError(
        f'{what} holds a {meta["model"]} but teacher.model is {model_name!r}; set '
        f'teacher.model={meta["model"]}.')
  if meta.get('num_classes', num_classes) != num_classes:
    raise checkpoints.TeacherCheckpointError(
        f'{what} has {meta["num_classes"]} classes but the dataset has {num_classes}; use a '
        'teacher trained on this dataset.')


def check_variables(variables, expected, what: str):
  """Raises TeacherCheckpointError naming the first layer whose shape differs."""
  got = {jax.tree_util.keystr(p): np.shape(v)
         for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  for name, shape in want.items():
    if name not in got:
      raise checkpoints.TeacherCheckpointError(
          f'{what}: layer {name} is missing from the checkpoint; is it a checkpoint of '
          'another architecture?')
    if got[name] != shape:
      raise checkpoints.TeacherCheckpointError(
          f'{what}: layer {name} has shape {got[name]} in the checkpoint but the model '
          f'expects {shape}.')
  extra = sorted(set(got) - set(want))
  if extra:
    raise checkpoints.TeacherCheckpointError(
        f'{what}: the checkpoint has layers the model lacks, first {extra[0]}; is it another '
        'architecture?')
