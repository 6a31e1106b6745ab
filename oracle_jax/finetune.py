"""Fine-tuning: `config.init_checkpoint` → the weights the trained network starts from.

The trained network is `config.student`: a distillation run's student or the model of a
`method='scratch'` run. Its checkpoint is read as a teacher's is (`teachers.read_model`:
an orbax model checkpoint, a run's workdir, a `.pth`, a `.safetensors` or `zoo:NAME`) and
laid over the seed's own initialisation: every tensor is taken (BatchNorm statistics
included) except a classifier of another class count, which keeps the seed's fresh one
(a new task's head). Any other difference between checkpoint and model stops the run in
one line naming the first tensors. The step, the optimizer's state and a distiller's own
modules start fresh. A run resuming from its own checkpoint never reads it (`train.fit`).
"""
import logging

import jax
import numpy as np

from oracle_jax import errors, models, teachers

_NOT_FOUND = ("Point init_checkpoint at an orbax model checkpoint directory, a run's "
              'workdir, a .pth or .safetensors file, or zoo:NAME (python -m oracle_jax.zoo '
              'list).')


class InitCheckpointError(errors.UserError, ValueError):
  """An init_checkpoint whose tensors do not fit the network being trained."""


def read(source, model_config, spec):
  """The variables (host numpy) of checkpoint `source` for the model block `model_config`
  (`config.student`) on dataset `spec`, checked to fit it (see the module docstring)."""
  architecture = models.architecture(model_config)
  what = f'init_checkpoint {source!r}'
  # A file converts at its own class count: only the comparison below may drop its head.
  variables, meta = teachers.read_model(source, model_config.model, what=what,
                                        not_found=_NOT_FOUND, **architecture)
  expected = models.abstract_variables(model_config.model, spec.num_classes,
                                       spec.image_shape[-1], **architecture)
  got, want = _shapes(variables), _shapes(expected)
  fresh = _check(got, want, f'{what} (a {meta["model"]})' if 'model' in meta else what,
                 model_config.model)
  if fresh:
    logging.warning('%s has %d classes, the dataset %d: its classifier (%s) is '
                    're-initialised; every other tensor is taken.', what, got[fresh[0]][-1],
                    spec.num_classes, models.CLASSIFIER)
  return variables


def start_from(initial, loaded):
  """`initial` (a seed's variables) with the tensors of `loaded` (from `read`) in their
  place; a classifier of another class count stays `initial`'s."""
  found = dict(_flat(loaded))

  def take(path, init):
    value = found[jax.tree_util.keystr(path)]
    return np.asarray(value, init.dtype) if np.shape(value) == np.shape(init) else init

  return jax.tree_util.tree_map_with_path(take, initial)


def _flat(tree):
  return [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _shapes(tree):
  return {name: tuple(np.shape(v)) for name, v in _flat(tree)}


def _is_classifier(name):
  return name.startswith(f"['params']['{models.CLASSIFIER}']")


def _check(got, want, what, model_name):
  """The classifier tensors to re-initialise (those differing in their class axis only);
  raises InitCheckpointError on any other missing, extra or reshaped tensor."""
  reshaped = [n for n in want if n in got and got[n] != want[n]]
  fresh = [n for n in reshaped if _is_classifier(n) and got[n][:-1] == want[n][:-1]]
  missing = [n for n in want if n not in got]
  extra = [n for n in got if n not in want]
  wrong = [n for n in reshaped if n not in fresh]
  problems = []
  if missing:
    problems.append(f'{len(missing)} tensor(s) missing from it, first {missing[0]}')
  if extra:
    problems.append(f'{len(extra)} tensor(s) the model lacks, first {extra[0]}')
  if wrong:
    problems.append(f'{len(wrong)} of another shape, first {wrong[0]} ({got[wrong[0]]} in '
                    f'it, {want[wrong[0]]} in the model)')
  if problems:
    raise InitCheckpointError(
        f'{what} does not fit student.model={model_name!r}: {"; ".join(problems)}. Set '
        'student.model (and student.small_stem) to the architecture it was saved from, or '
        f'use a checkpoint of a {model_name}.')
  return fresh
