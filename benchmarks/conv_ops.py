"""Single convolutions of the CIFAR ResNets on this CPU: forward, input gradient, and the
weight gradient as XLA computes it ('wgrad') and summed over batch chunks
(`oracle_jax.conv`, 'wgrad c<chunk>'), each compiled with XLA's default options ('ynn':
convolutions go to YNNPACK where it accepts them) and with `conv.CPU_COMPILER_OPTIONS`
('eigen': convolutions go to XLA's Eigen kernels). One JSON line per shape with the best
time and the median CPU time / wall time of the process (1.0 = one core busy, 2.0 = two):
on the 2-core machine of issue 7 every YNNPACK convolution runs at 1.0, Eigen's at ~1.9.
All variants of a shape are timed round-robin, so load drifts hit them alike.

    python benchmarks/conv_ops.py [--batch=64] [--chunks=4,8,16] [--repeats=8]
"""
import argparse
import functools
import json
import os
import resource
import sys
import time

import jax
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from oracle_jax import compilation_cache, conv  # pylint: disable=g-import-not-at-top,wrong-import-position

NHWC = ('NHWC', 'HWIO', 'NHWC')
# (input size, in channels, out channels, stride, kernel): every conv of resnet8..110
SHAPES = [(32, 3, 16, 1, 3), (32, 16, 16, 1, 3), (32, 16, 32, 2, 3), (32, 16, 32, 2, 1),
          (16, 32, 32, 1, 3), (16, 32, 64, 2, 3), (16, 32, 64, 2, 1), (8, 64, 64, 1, 3)]


def ops(impl, stride, pad):
  f = lambda x, w: impl(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)
  return {'fwd': lambda x, w, g: f(x, w),
          'igrad': lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0],
          'wgrad': lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0]}


def cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--chunks', default='4,8,16')
  p.add_argument('--repeats', type=int, default=8)
  args = p.parse_args()
  compilation_cache.enable()
  rng = np.random.default_rng(0)
  for size, c_in, c_out, stride, k in SHAPES:
    pad, out = k // 2, size // stride
    x = rng.normal(size=(args.batch, size, size, c_in)).astype(np.float32)
    w = rng.normal(size=(k, k, c_in, c_out)).astype(np.float32)
    g = rng.normal(size=(args.batch, out, out, c_out)).astype(np.float32)
    fns = ops(lax.conv_general_dilated, stride, pad)
    for c in map(int, args.chunks.split(',')):
      if c < args.batch:
        impl = functools.partial(conv.chunked_conv_general_dilated, chunk_size=c,
                                 max_chunks=args.batch)
        fns[f'wgrad c{c}'] = ops(impl, stride, pad)['wgrad']
    compiled = {}
    for name, f in fns.items():
      for backend, options in (('ynn', {}), ('eigen', conv.CPU_COMPILER_OPTIONS)):
        compiled[f'{name} {backend}'] = jax.jit(f, compiler_options=options or None)
    want = compiled['wgrad ynn'](x, w, g)
    for name, f in compiled.items():
      got = f(x, w, g)
      if name.startswith('wgrad'):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    times = {n: [] for n in compiled}
    cores = {n: [] for n in compiled}
    for _ in range(args.repeats):
      for n, f in compiled.items():
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(3):
          f(x, w, g).block_until_ready()
        dt = time.perf_counter() - t0
        times[n].append(dt / 3)
        cores[n].append((cpu_seconds() - c0) / dt)
    gflop = 2 * args.batch * out * out * k * k * c_in * c_out / 1e9
    print(json.dumps({
        'shape': f'{k}x{k} {size}x{size}x{c_in}->{c_out} s{stride}', 'batch': args.batch,
        'gflop': round(gflop, 4),
        'ms_min': {n: round(min(t) * 1e3, 3) for n, t in times.items()},
        'gflop_per_s_best': {n: round(gflop / min(t), 1) for n, t in times.items()},
        'cpu_per_wall': {n: round(float(np.median(c)), 2) for n, c in cores.items()}}),
          flush=True)


if __name__ == '__main__':
  main()
