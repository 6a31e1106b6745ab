"""Device mesh, shardings and global batches: data parallelism with `jit` over a mesh.

The batch is sharded over the `data` axis and the state replicated; XLA inserts the
gradient and BatchNorm all-reduces. The same program runs on one CPU, several devices
and multi-host pods (where each process feeds its own part of the global batch).
"""
import collections
import itertools
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oracle_jax import errors


def make_mesh(devices=None):
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def batch_sharding(mesh):
  return NamedSharding(mesh, P('data'))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh, micro_batches: int = 1):
  devices = mesh.devices.size * micro_batches
  if global_batch_size % devices:
    what = f'the {mesh.devices.size} devices' + (
        f' × {micro_batches} micro-batches' if micro_batches > 1 else '')
    raise errors.ConfigError(f'batch_size={global_batch_size} is not divisible by {what}; use a '
                     f'multiple of {devices} (e.g. '
                     f'{max(devices, global_batch_size // devices * devices)}).')


def global_batch(local_batch: dict, mesh):
  """This process's numpy batch → global `jax.Array`s sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def prefetch_to_devices(host_batches, mesh, size=2):
  """`global_batch` of each host batch, issued `size` batches ahead of the consumer.

  Copies to the devices are asynchronous: issued early, the next batches travel while
  the current steps compute, also after the loop has waited for metrics or a checkpoint.
  """
  ahead = collections.deque()

  def fetch(n):
    for host_batch in itertools.islice(host_batches, n):
      ahead.append(global_batch(host_batch, mesh))

  fetch(size)
  while ahead:
    yield ahead.popleft()
    fetch(1)


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def detected_cluster():
  """The cluster environment that `jax.distributed.initialize()` without arguments would
  use (Cloud TPU VM slice, GKE TPU, SLURM, Open MPI, Kubernetes…), or None.

  JAX's own detection, asked the same way JAX asks it, so that every cluster JAX supports
  works here too. It stays cheap off clusters: the TPU checks query the metadata server
  only on a machine with TPU chips, the others read environment variables.
  """
  from jax._src import clusters  # pylint: disable=g-import-not-at-top  (no public API)
  candidates = clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
  return next((cluster for cluster in candidates
               if not cluster.opt_in_only_method and cluster.is_env_present()), None)


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Starts JAX's multi-controller runtime when there is more than one process: from the
  flags when given, else from the cluster JAX detects. A single process needs nothing.

  Every process then logs one line, e.g. "process 3 of 8, 32 devices (4 here)".
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    how = f'coordinator {coordinator_address}'
  else:
    cluster = detected_cluster()
    # A one-process job (an `srun` of one task, a single-host TPU VM) runs alone.
    if cluster is None or cluster.get_process_count() == 1:
      return
    jax.distributed.initialize()
    how = f'detected by JAX as {cluster.__name__}'
  logging.warning('process %d of %d, %d devices (%d here); %s', jax.process_index(),
                  jax.process_count(), jax.device_count(), jax.local_device_count(), how)
