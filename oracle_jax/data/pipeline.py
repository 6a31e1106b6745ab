"""Train and eval iterators: per-process parts of deterministic global batches.

digits, cifar10, cifar100 and tiny_imagenet are read whole into host memory
(O(train split): ~150 MB for CIFAR, ~1.2 GB for Tiny-ImageNet) by every process.
The training stream is then a pure function of (dataset, seed, global batch size,
train_examples): position p of the stream is example perm_e[p mod n] of epoch
e = p // n, where perm_e is a permutation seeded by (seed, e). Epochs are
concatenated without dropping anything, so every example is seen once per epoch
and a global batch may span two epochs. Global batch t holds positions
[t * B, (t + 1) * B); process i takes the contiguous slice [i * b, (i + 1) * b),
b = B / process_count. Batches and augmentation therefore do not depend on the
number of processes, and `start_step` jumps straight to any batch.

Streamed datasets (`spec.streamed`: imagenet2012, large folder datasets) are read from
disk instead (streamed.py). Folder datasets held in memory are resized to one size
when loaded (folder.py).
"""
import functools
import itertools
import math
import queue
import threading

import jax
import numpy as np

from oracle_jax.data import augment as augment_lib
from oracle_jax.data import folder
from oracle_jax.data import sources
from oracle_jax.data import specs
from oracle_jax.data.global_batches import local_batch_size, process_positions

# Host batches computed ahead of the consumer, which moves them to the devices.
_PREFETCH = 2


def train_iterator(spec, *, data_dir, global_batch_size, seed, start_step=0,
                   augment=True, train_examples=0, whole_batches=False):
  """Infinite iterator of this process's part of each global training batch.

  Yields dicts of numpy arrays: `image` uint8 [b, H, W, C], `label` int32 [b]
  (and `coarse_label` int32 [b] for cifar100), b = global_batch_size / processes.
  `train_examples > 0` trains on a fixed class-stratified subset of that size.
  `whole_batches`: every process yields the whole global batch (b = global_batch_size),
  for shardings whose devices on one process need more than its slice (populations).
  """
  # Fail on a bad argument before reading any data.
  local_batch_size(global_batch_size, jax.process_count())
  if seed < 0 or start_step < 0:
    raise ValueError(f'seed and start_step must be >= 0, got {seed}, {start_step}.')
  _check_whole_batches(spec, whole_batches)
  if spec.streamed:
    if train_examples:
      raise ValueError(f'train_examples is not supported for streamed {spec.name}.')
    from oracle_jax.data import streamed  # pylint: disable=g-import-not-at-top
    return streamed.train_iterator(
        spec, data_dir=data_dir, global_batch_size=global_batch_size, seed=seed,
        start_step=start_step, augment=augment)
  data = load_split(spec, data_dir, 'train')
  if train_examples:
    data = {k: v[stratified_subset(data['label'], train_examples)]
            for k, v in data.items()}
  return prefetch(train_batches(
      data, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      augmentation=augmentation(spec) if augment else None,
      **_process(whole_batches)))


def eval_iterator(spec, *, data_dir, global_batch_size, split=None, whole_batches=False):
  """One pass over `split` (default: the spec's eval split), each example once.

  Every process yields the same number of batches of the same shape; the last
  global batch is padded with zero images, label 0 and `mask` False.
  `whole_batches`: as for `train_iterator`.
  """
  split = split or spec.eval_split
  local_batch_size(global_batch_size, jax.process_count())  # Before reading data.
  _check_whole_batches(spec, whole_batches)
  if spec.streamed:
    from oracle_jax.data import streamed  # pylint: disable=g-import-not-at-top
    return streamed.eval_iterator(
        spec, data_dir=data_dir, global_batch_size=global_batch_size, split=split)
  data = load_split(spec, data_dir, split)
  return prefetch(eval_batches(data, global_batch_size=global_batch_size,
                               **_process(whole_batches)))


def load_split(spec, data_dir, split):
  """A whole split of an in-memory dataset, as numpy arrays."""
  if specs.is_folder(spec.name):
    return folder.load_split(spec, split)
  return sources.load_split(spec, data_dir, split)


def _process(whole_batches):
  """The (process_index, process_count) whose part of each global batch to yield: a
  process seeing whole batches reads as the one process of a one-process run."""
  if whole_batches:
    return dict(process_index=0, process_count=1)
  return dict(process_index=jax.process_index(), process_count=jax.process_count())


def _check_whole_batches(spec, whole_batches):
  # A streamed dataset's stream depends on the process count (streamed.py).
  if whole_batches and spec.streamed and jax.process_count() > 1:
    raise ValueError(f'{spec.name} is streamed in per-process shards; every process cannot '
                     'read whole batches of it.')


def augmentation(spec):
  """(pad, flip) of the random crop + flip that trains in-memory dataset `spec`; None
  for no augmentation."""
  return None if spec.augment == 'none' else (spec.crop_padding, spec.flip)


def train_batches(data, *, global_batch_size, seed, start_step, augmentation,
                  process_index, process_count):
  """The training batches of one process, from step `start_step` on, forever."""
  local = local_batch_size(global_batch_size, process_count)
  n = len(data['label'])
  permutation = functools.lru_cache(maxsize=2)(
      lambda epoch: epoch_permutation(n, seed, epoch))
  for step in itertools.count(start_step):
    positions = process_positions(step, global_batch_size, process_index, local)
    epochs, offsets = np.divmod(positions, n)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):  # One or two epochs per batch.
      indices[epochs == epoch] = permutation(int(epoch))[offsets[epochs == epoch]]
    batch = {k: v[indices] for k, v in data.items()}
    if augmentation:
      pad, flip = augmentation
      batch['image'] = augment_lib.pad_crop_flip(
          batch['image'], augment_lib.example_bits(seed, positions), pad=pad, flip=flip)
    yield batch


def eval_batches(data, *, global_batch_size, process_index, process_count):
  """One process's part of each global batch of one in-order pass over `data`."""
  local = local_batch_size(global_batch_size, process_count)
  n = len(data['label'])
  for step in range(math.ceil(n / global_batch_size)):
    positions = process_positions(step, global_batch_size, process_index, local)
    mask = positions < n
    batch = {k: v[np.where(mask, positions, 0)] for k, v in data.items()}
    for v in batch.values():
      v[~mask] = 0
    batch['mask'] = mask
    yield batch


def epoch_permutation(n, seed, epoch):
  return np.random.default_rng([seed, epoch]).permutation(n)


def stratified_subset(labels, size):
  """Sorted indices of a fixed, class-stratified subset of `size` examples.

  Independent of any seed, so runs with different seeds share the subset. Each
  class contributes within one example of its share; a smaller subset is
  contained in a larger one.
  """
  n = len(labels)
  if not 0 < size <= n:
    raise ValueError(f'train_examples must be in [1, {n}], got {size}.')
  order = np.random.default_rng(0).permutation(n)  # Fixed: not the run's seed.
  shuffled = labels[order]
  # Rank of each example within its class, in the shuffled order.
  by_class = np.argsort(shuffled, kind='stable')
  counts = np.bincount(shuffled)
  starts = np.cumsum(counts) - counts
  rank = np.empty(n, np.int64)
  rank[by_class] = np.arange(n) - np.repeat(starts, counts)
  # Taking examples by (rank + 1/2) / class size interleaves the classes in
  # proportion to their sizes.
  key = (rank + 0.5) / counts[shuffled]
  return np.sort(order[np.argsort(key, kind='stable')[:size]])


def prefetch(iterator, size=_PREFETCH):
  """Runs `iterator` in a background thread, `size` items ahead of the consumer."""
  items = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        if not _put(items, (True, item), stop):
          return
    except Exception as e:  # pylint: disable=broad-except
      _put(items, (False, e), stop)
      return
    _put(items, (False, None), stop)

  threading.Thread(target=produce, daemon=True).start()
  try:
    while True:
      ok, item = items.get()
      if ok:
        yield item
      elif item is None:
        return
      else:
        raise item
  finally:
    stop.set()  # The consumer has stopped: let the producer end too.


def _put(items, item, stop):
  """Puts `item` unless `stop` is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      items.put(item, timeout=0.1)
      return True
    except queue.Full:
      pass
  return False
