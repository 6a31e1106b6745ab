"""Per-host throughput of the streamed ImageNet input pipeline (issue 15, item 5).

Times `oracle_jax.data.streamed`'s own iterators on fake ImageNet (JPEGs of ImageNet's
typical sizes, prepared by TFDS's imagenet2012 builder; see `oracle_jax.data.fake_imagenet`)
and prints one JSON line per kind:

  train            JPEG decode of the random window + resize to 224 + flip, uint8 batches
  train_on_device  the same, then `parallel.prefetch_to_devices` onto this host's devices
  eval             full decode + resize 256 + centre crop 224 (over the train images)

with wall-clock images/s, the CPU time this process used (images per CPU-second is what
scales with a host's cores) and the cores other processes used meanwhile (this machine is
shared: compare records taken when others_cores is small).

  python benchmarks/input_pipeline.py [--data_dir=DIR] [--batch=128] [--batches=20]
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import compilation_cache, data, parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from oracle_jax.data import fake_imagenet, imagenet, sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch.benchmark import cpu_jiffies  # pylint: disable=g-import-not-at-top,wrong-import-position

_HZ = os.sysconf('SC_CLK_TCK')


def timed(batches, count, warmup):
  """Wall seconds, own CPU seconds and others' cores over `count` batches after `warmup`."""
  for _ in range(warmup):  # tf.data's autotuning settles in the first batches
    jax.block_until_ready(next(batches))
  busy0, own0 = cpu_jiffies()
  start = time.perf_counter()
  for _ in range(count):
    jax.block_until_ready(next(batches))
  wall = time.perf_counter() - start
  busy1, own1 = cpu_jiffies()
  own = (own1 - own0) / _HZ
  return wall, own, ((busy1 - busy0) / _HZ - own) / wall


def prepared(data_dir, classes, per_class):
  """The fake imagenet2012 in `data_dir`, prepared on first use."""
  builder = sources.builder(data.dataset_spec('imagenet2012'), data_dir)
  if not builder.is_prepared():
    builder = fake_imagenet.prepare(data_dir, classes=classes, train_per_class=per_class,
                                    validation=64)
  return builder


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data_dir', default=os.path.join(tempfile.gettempdir(),
                                                    'oracle_jax_fake_imagenet'))
  p.add_argument('--classes', type=int, default=16)
  p.add_argument('--per_class', type=int, default=64)
  p.add_argument('--batch', type=int, default=128, help='per-host batch')
  p.add_argument('--batches', type=int, default=20, help='timed batches per kind')
  p.add_argument('--warmup', type=int, default=3)
  args = p.parse_args()
  compilation_cache.enable()
  builder = prepared(args.data_dir, args.classes, args.per_class)
  spec = data.dataset_spec('imagenet2012')
  mesh = parallel.make_mesh()
  train = lambda: imagenet.train_iterator(
      spec, data_dir=args.data_dir, global_batch_size=args.batch, seed=0, start_step=0,
      augment=True)
  kinds = {
      'train': train,
      'train_on_device': lambda: parallel.prefetch_to_devices(train(), mesh),
      # Over the larger train split, pass after pass.
      'eval': lambda: _forever(lambda: imagenet.eval_iterator(
          spec, data_dir=args.data_dir, global_batch_size=args.batch, split='train')),
  }
  files = builder.info.splits['train'].num_examples
  for kind, make in kinds.items():
    wall, own, others = timed(make(), args.batches, args.warmup)
    images = args.batch * args.batches
    print(json.dumps(dict(
        kind=kind, batch=args.batch, images=images, train_files=files,
        img_per_s=round(images / wall, 1), img_per_cpu_s=round(images / own, 1),
        cores_used=round(own / wall, 2), others_cores=round(others, 2),
        host_cores=os.cpu_count(), devices=len(jax.local_devices()),
        jpeg_kb_mean=round(float(np.mean([len(x) for x in _sample_jpegs(builder)])) / 1024, 1))),
        flush=True)


def _forever(make_iterator):
  while True:
    yield from make_iterator()


def _sample_jpegs(builder, n=64):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = imagenet.process_shard(builder, f'train[:{n}]', process_index=0, process_count=1)
  return [ex['image'] for ex in tfds.as_numpy(ds)]


if __name__ == '__main__':
  main()
