"""How a global batch divides among processes: each one's batch size and stream positions.

Shared by the in-memory pipeline and the streamed ImageNet one.
"""
import numpy as np


def local_batch_size(global_batch_size, process_count):
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size {global_batch_size} must be a positive '
                     f'multiple of the number of processes, {process_count}.')
  return global_batch_size // process_count


def process_positions(step, global_batch_size, process_index, local_batch):
  """Stream positions of process `process_index`'s slice of global batch `step`."""
  start = step * global_batch_size + process_index * local_batch
  return np.arange(start, start + local_batch, dtype=np.int64)
