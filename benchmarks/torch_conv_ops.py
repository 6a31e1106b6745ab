"""PyTorch's (oneDNN, channels-last) 3x3 convolutions at the CIFAR ResNets' stage shapes,
for comparison with conv_ops.py: forward, and forward + backward (input and weight
gradients). Best of --repeats, ms; one JSON line per shape.

    python benchmarks/torch_conv_ops.py [--batch=64] [--threads=2]
"""
import argparse
import json
import time

import numpy as np
import torch

SHAPES = [(32, 16, 16), (16, 32, 32), (8, 64, 64)]  # (height = width, in, out channels)


def best_ms(fn, repeats):
  for _ in range(3):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return round(float(np.min(times)) * 1e3, 3)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--repeats', type=int, default=20)
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  for size, c_in, c_out in SHAPES:
    x = torch.randn(args.batch, c_in, size, size).to(memory_format=torch.channels_last)
    x.requires_grad_()
    conv = torch.nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False).to(memory_format=torch.channels_last)
    g = torch.randn_like(conv(x))

    def forward():
      with torch.no_grad():
        conv(x)

    def forward_backward():
      x.grad = None
      conv.weight.grad = None
      conv(x).backward(g)

    print(json.dumps({'shape': f'3x3 {size}x{size}x{c_in}->{c_out} s1', 'batch': args.batch,
                      'torch': torch.__version__, 'threads': args.threads,
                      'fwd_ms': best_ms(forward, args.repeats),
                      'fwd_bwd_ms': best_ms(forward_backward, args.repeats)}))


if __name__ == '__main__':
  main()
