"""Metrics out: `metrics.jsonl`, TensorBoard (clu) and progress bars on stderr.

Only process 0 writes. Device metrics are fetched in one transfer per log interval;
throughput (`perf/steps_per_sec`, `perf/img_per_sec`) is clu's `ReportProgress` estimate.
`progress_bar` is every long command's bar (training, evaluations, the teacher analysis,
export): the one place that decides where and on which process progress is shown.
"""
import json
import sys

import jax
import numpy as np
import tqdm

from oracle_jax import errors, fileio



class NonFiniteLossError(errors.UserError, FloatingPointError):
  """A non-finite loss or gradient: the run stops, the last good checkpoint is kept."""


def _lines_up_to(path, last_step):
  """The lines of a metrics.jsonl whose step is at most `last_step`: on resume, what was
  logged after the restored checkpoint is logged again, so it is dropped here."""
  if not path.exists():
    return []
  kept = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    try:
      step = json.loads(line)['step']
    except (ValueError, KeyError, TypeError):
      raise fileio.UnreadableFileError(
          f'Line {number} of {str(path)!r} is not a metrics record ({line[:80]!r}); move the '
          'file away (or delete that line) and rerun.') from None
    if step <= last_step:
      kept.append(line + '\n')
  return kept


class MetricWriter:

  def __init__(self, workdir, start_step=0, tensorboard=True):
    self._primary = jax.process_index() == 0
    # Rewritten whole (atomically) at each flush: object stores such as GCS cannot
    # append, and a kill mid-write must not truncate it. It holds one line per log
    # interval, so it stays small.
    self._jsonl = workdir / 'metrics.jsonl'
    self._lines = _lines_up_to(self._jsonl, start_step) if self._primary else []
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TF)
    self._tb = metric_writers.create_default_writer(
        str(workdir / 'tensorboard'), just_logging=not (self._primary and tensorboard))

  def write_train(self, pending, last_good_step):
    """Averages and writes the pending steps' metrics; returns the mean loss (None if
    nothing was pending). Raises NonFiniteLossError naming the first bad step and value.
    """
    if not pending:
      return None
    steps = [s for s, _ in pending]
    values = jax.device_get([m for _, m in pending])
    for step, m in zip(steps, values):
      bad = {k: float(m[k]) for k in ('loss', 'grad_norm') if not np.isfinite(m[k])}
      if bad:
        raise NonFiniteLossError(
            f'Non-finite {", ".join(f"{k} = {v}" for k, v in bad.items())} at step {step}; '
            f'stopping. The last good checkpoint (step {last_good_step}) is kept. Lower the '
            'learning rate or oracle.gamma, or check the data.')
    mean = {k: float(np.mean([m[k] for m in values])) for k in values[0]}
    self._write(steps[-1], {f'train/{k}': v for k, v in mean.items()})
    return mean['loss']

  def write_eval(self, step, results):
    if self._primary:
      tqdm.tqdm.write(f'step {step}: eval ' + ', '.join(
          f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}' for k, v in results.items()),
                      file=sys.stderr)
    self._write(step, {f'eval/{k}': v for k, v in results.items()})

  def write_scalars(self, step, scalars):
    """`scalars` as they are (clu's `MetricWriter` method of the same name)."""
    self._write(step, scalars)

  def _write(self, step, scalars):
    self._tb.write_scalars(step, scalars)
    if self._primary:
      self._lines.append(json.dumps({'step': step, **scalars}) + '\n')
      fileio.write_text(self._jsonl, ''.join(self._lines))

  def close(self):
    self._tb.flush()


class Throughput:
  """Steps/s and images/s at every `every_steps`-th step (and the last), measured by clu's
  `periodic_actions.ReportProgress` (host time between reports: no device sync) and
  written as `perf/…` to every writer. Call it after every step."""

  def __init__(self, writers, total_steps, images_per_step, every_steps):
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top  (imports TF)
    self._writers, self._images_per_step = writers, images_per_step
    self._report = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=self, every_steps=every_steps or None,
        every_secs=None)

  def __call__(self, step):
    self._report(step)

  def write_scalars(self, step, scalars):
    """ReportProgress's writer: its `steps_per_sec` (its `uptime` is left out)."""
    if 'steps_per_sec' in scalars:
      rate = float(scalars['steps_per_sec'])
      for writer in self._writers:
        writer.write_scalars(step, {'perf/steps_per_sec': rate,
                                    'perf/img_per_sec': rate * self._images_per_step})


def progress_bar(total, unit, *, desc=None, initial=0, leave=True):
  """A tqdm bar of `total` `unit`s (their rate and ETA) on stderr, shown on process 0 only:
  every process runs the same loop, one reports it. tqdm redraws at most once a second,
  so updating it at every step or batch costs the loop nothing."""
  return tqdm.tqdm(total=total, initial=initial, unit=unit, desc=desc, leave=leave,
                   file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                   disable=jax.process_index() != 0)


def counted(batches, num_examples, global_batch_size, *, desc, leave=False):
  """Yields `batches` while a bar counts their examples: each batch as done when the next
  is asked for. Every global batch holds `global_batch_size` examples but the padded last
  ones, so the bar ends at `num_examples` exactly (None: a count without total or ETA)."""
  done = 0
  with progress_bar(num_examples, 'img', desc=desc, leave=leave) as bar:
    for batch in batches:
      yield batch
      n = global_batch_size if num_examples is None else min(global_batch_size,
                                                             num_examples - done)
      bar.update(n)
      done += n


class Progress:
  """The training bar: steps (counted as they are dispatched, no device sync) with
  images/s and ETA. Call `update(step)` after every step."""

  def __init__(self, total, start, images_per_step):
    self._bar = progress_bar(total, 'step', desc='train', initial=start)
    self._images_per_step, self._last = images_per_step, start

  def update(self, step):
    if self._bar.update(step - self._last):  # just redrawn: the rate for the next redraw
      rate = self._bar.format_dict['rate']
      if rate:
        self._bar.set_postfix_str(f'{rate * self._images_per_step:,.0f} img/s', refresh=False)
    self._last = step

  def close(self):
    self._bar.close()
