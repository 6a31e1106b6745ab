"""Timing on a shared machine: the quiet-step logic of benchmarks/torch_reference.py.

A step is "clean" when other processes used at most `other_max` cores while it ran
(jiffies of the whole machine minus this process's, from /proc); statistics use the clean
steps when at least half are, and a measurement is retried after waiting for quiet.
"""
import logging
import os
import platform
import re
import time

HZ = os.sysconf('SC_CLK_TCK')


def host_cpu():
  """'<CPU model> x<cores>': results from different machines are not comparable."""
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'{model} x{os.cpu_count()}'


def cpu_jiffies():
  """(busy jiffies of the whole machine, user+system jiffies of this process)."""
  with open('/proc/stat') as f:
    v = [int(t) for t in f.readline().split()[1:9]]
  with open('/proc/self/stat') as f:
    s = f.read().rsplit(')', 1)[1].split()
  return sum(v) - v[3] - v[4], int(s[11]) + int(s[12])


def wait_quiet(max_wait, other_max, window=0.5):
  t_end = time.perf_counter() + max_wait
  while True:
    b0, o0 = cpu_jiffies()
    time.sleep(window)
    b1, o1 = cpu_jiffies()
    if ((b1 - b0) - (o1 - o0)) / HZ / window <= other_max or time.perf_counter() >= t_end:
      return


class CompileCounter(logging.Handler):
  """Counts 'Finished XLA compilation of jit(NAME)' records (jax_log_compiles)."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.names = []

  def emit(self, record):
    m = re.match(r'Finished XLA compilation of jit\((\w+)\)', record.getMessage())
    if m:
      self.names.append(m.group(1))

  def count(self, name):
    return self.names.count(name)


def with_retries(measure, args):
  """`measure(quiet_wait)` -> records; repeated (waiting longer for a quiet machine)
  while a record has fewer than half its steps clean. Keeps the cleanest attempt."""
  best = measure(args.quiet_wait)
  for _ in range(args.retries):
    if min(r['n_clean'] for r in best) >= max(3, args.steps // 2):
      break
    again = measure(max(args.quiet_wait, 60.0))
    if min(r['n_clean'] for r in again) > min(r['n_clean'] for r in best):
      best = again
  return best


def time_interleaved(variants, args, batch_size, quiet_wait):
  """Times variants round-robin, one step each per round, so that the machine's load
  drifts hit all of them alike; a step is clean when others used <= --other-max cores."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  wait_quiet(quiet_wait, args.other_max)
  times = [[] for _ in variants]
  clean = [[] for _ in variants]
  other = [0] * len(variants)
  rounds = 0
  while rounds < 3 * args.steps and min(len(c) for c in clean) < args.steps:
    rounds += 1
    for i, v in enumerate(variants):
      b0, o0 = cpu_jiffies()
      t0 = time.perf_counter()
      v.step()
      dt = time.perf_counter() - t0
      b1, o1 = cpu_jiffies()
      others = max(0, (b1 - b0) - (o1 - o0))
      other[i] += others
      times[i].append(dt)
      if others <= args.other_max * dt * HZ + 1:  # +1: jiffy counter granularity
        clean[i].append(dt)
  out = []
  for i in range(len(variants)):
    use = clean[i] if len(clean[i]) >= max(3, args.steps // 2) else times[i]
    ms = np.asarray(use) * 1e3
    median = float(np.median(ms))
    out.append({'ms_median': round(median, 3),
                'ms_p25': round(float(np.percentile(ms, 25)), 3),
                'ms_min': round(float(ms.min()), 3),
                'img_per_s': round(batch_size / median * 1e3, 1),
                'n_timed': len(times[i]), 'n_clean': len(clean[i]),
                'others_cores': round(other[i] / HZ / sum(times[i]), 3)})
  return out


def combine_rounds(timings, batch_size):
  """One timing (or torch record) from a measurement's rounds: medians of the rounds'
  figures, so that a ratio of two of them resists the machine's speed drifting between
  rounds (each round times ours and PyTorch's steps back to back)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  medians = [t['ms_median'] for t in timings]
  median = float(np.median(medians))
  return dict(timings[-1], ms_median=round(median, 3), ms_median_rounds=medians,
              ms_p25=round(float(np.median([t['ms_p25'] for t in timings])), 3),
              ms_min=min(t['ms_min'] for t in timings),
              img_per_s=round(batch_size / median * 1e3, 1),
              n_timed=sum(t['n_timed'] for t in timings),
              n_clean=sum(t['n_clean'] for t in timings),
              others_cores=round(float(np.mean([t['others_cores'] for t in timings])), 3))
