"""Shared helpers of the end-to-end tests: tiny configs on the digits, final parameters."""
import copy
import json
import os
import socket
import sys
import time

import jax
import numpy as np

from configs import default as default_config
from oracle_jax import checkpoints, metrics_io, parallel, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(config, data_dir, **overrides):
  c = copy.deepcopy(config)
  c.data_dir = str(data_dir)
  c.train_steps, c.batch_size, c.eval_batch_size = 6, 16, 64
  c.log_every_steps, c.checkpoint_every_steps = 2, 2
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value
  return c


def digits_config(data_dir, **overrides):
  c = default_config.get_config()
  return tiny(c, data_dir, **{'student.model': 'resnet8', **overrides})


def metric_records(path):
  """A metrics.jsonl's records, without the throughput (`perf/…`, timings: they differ
  from run to run); records that held nothing else are dropped."""
  records = [json.loads(line) for line in open(path).read().splitlines()]
  records = [{k: v for k, v in r.items() if not k.startswith('perf/')} for r in records]
  return [r for r in records if set(r) != {'step'}]


def final_params(config, workdir, mesh=None):
  run = train.Run(config, mesh or parallel.make_mesh())
  state, _ = checkpoints.TrainCheckpoints(os.path.join(workdir, 'checkpoints')).restore_latest(
      run.init_state(config.seed))
  return jax.device_get(state.variables())


def assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def main_command(workdir, data_dir, *overrides):
  return [sys.executable, os.path.join(REPO, 'launch', 'main.py'),
          '--config=' + os.path.join(REPO, 'configs', 'default.py'), f'--workdir={workdir}',
          '--config.method=scratch', '--config.student.model=resnet8',
          f'--config.data_dir={data_dir}', '--config.batch_size=16', '--config.eval_batch_size=64',
          '--config.checkpoint_every_steps=2', '--config.log_every_steps=2', *overrides]


def free_port():
  """A localhost port free now: the coordinator's of a multi-process test."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def wait_until(proc, predicate, timeout=240):
  """Polls `predicate()` while the subprocess `proc` runs (to signal it mid-training)."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None and not predicate():
    time.sleep(0.05)


def saved_steps(checkpoint_dir):
  return [int(p.name) for p in checkpoint_dir.glob('*') if p.name.isdigit()]


class RecordedBars:
  """Every bar `metrics_io.progress_bar` makes while patched (`monkeypatch`), as
  `{'desc', 'unit', 'total', 'updates'}`: the real bar, each `update(n)` recorded."""

  def __init__(self, monkeypatch):
    self.bars, real = [], metrics_io.progress_bar

    def recording(total, unit, **kwargs):
      bar = real(total, unit, **kwargs)
      record = dict(desc=kwargs.get('desc'), unit=unit, total=total, updates=[])
      update = bar.update
      bar.update = lambda n=1: record['updates'].append(n) or update(n)
      self.bars.append(record)
      return bar

    monkeypatch.setattr(metrics_io, 'progress_bar', recording)

  def named(self, desc):
    return [b for b in self.bars if b['desc'] == desc]
