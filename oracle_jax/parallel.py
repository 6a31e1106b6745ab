"""Device mesh, shardings and global batches: data parallelism with `jit` over a mesh.

The batch is sharded over the `data` axis and the state replicated; XLA inserts the
gradient and BatchNorm all-reduces. The same program runs on one CPU, several devices
and multi-host pods (where each process feeds its own part of the global batch).
"""
import os

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


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


# Set by the cluster managers whose multi-process environment JAX detects by itself.
_CLUSTER_VARIABLES = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                      'OMPI_COMM_WORLD_SIZE')


def _in_multiprocess_cluster():
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return ',' in hosts or any(os.environ.get(v) for v in _CLUSTER_VARIABLES[1:])


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Starts JAX's multi-controller runtime: explicitly from flags, or auto-detected on
  TPU pod slices, SLURM (`srun`) and Open MPI; a single process needs nothing."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _in_multiprocess_cluster():
    jax.distributed.initialize()
