"""Train-mode BatchNorm + ReLU, forward and backward, at the CIFAR ResNets' activation
shapes: `oracle_jax.models.layers.batch_norm_train` (closed-form VJP) against autodiff of
the same two-pass formula, and a scale-and-shift without statistics as the floor. Each
program chains `--layers` of them (as in a stage); variants are timed round-robin with
`conv.CPU_COMPILER_OPTIONS`. One JSON line per shape.

    python benchmarks/bn_ops.py [--batch=64] [--layers=7] [--repeats=30]
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from oracle_jax import compilation_cache, conv  # pylint: disable=g-import-not-at-top,wrong-import-position
from oracle_jax.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = [(32, 16), (16, 32), (8, 64)]  # (height = width, channels) of the three stages


def autodiff(x, scale, bias):
  x32 = x.astype(jnp.float32)
  mean = x32.mean((0, 1, 2))
  var = jnp.square(x32 - mean).mean((0, 1, 2))
  return (x32 - mean) * (scale * jax.lax.rsqrt(var + layers.BN_EPSILON)) + bias


VARIANTS = {
    'closed-form VJP': lambda x, s, b: layers.batch_norm_train(x, s, b, layers.BN_EPSILON)[0],
    'autodiff': autodiff,
    'no statistics': lambda x, s, b: x * s + b,
}


def chain_grad(bn, num_layers):
  def loss(x, scales, biases):
    for i in range(num_layers):
      x = jnp.maximum(bn(x, scales[i], biases[i]), 0.0) * 1.01  # 1.01: layers stay distinct
    return jnp.sum(x * x)
  return jax.grad(loss, argnums=(0, 1, 2))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--layers', type=int, default=7)
  p.add_argument('--repeats', type=int, default=30)
  args = p.parse_args()
  compilation_cache.enable()
  options = conv.compiler_options('cpu')
  for size, channels in SHAPES:
    x = jnp.asarray(np.random.RandomState(0).randn(args.batch, size, size, channels), jnp.float32)
    scales = jnp.ones((args.layers, channels))
    biases = jnp.zeros((args.layers, channels))
    compiled = {name: jax.jit(chain_grad(bn, args.layers), compiler_options=options)
                .lower(x, scales, biases).compile() for name, bn in VARIANTS.items()}
    times = {name: [] for name in compiled}
    for f in compiled.values():
      jax.block_until_ready(f(x, scales, biases))
    for _ in range(args.repeats):
      for name, f in compiled.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, scales, biases))
        times[name].append(time.perf_counter() - t0)
    print(json.dumps({
        'shape': f'{args.batch}x{size}x{size}x{channels}', 'layers': args.layers,
        'ms_median': {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()},
        'ms_min': {k: round(float(np.min(v)) * 1e3, 3) for k, v in times.items()}}))


if __name__ == '__main__':
  main()
