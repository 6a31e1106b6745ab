"""Pods and clusters: start-up through JAX's own cluster detection, and preemption of one
process stopping every process at the same step."""
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from helpers import digits_config, final_params, free_port, main_command, saved_steps, wait_until
from jax._src.clusters import cloud_tpu_cluster

from oracle_jax import data, parallel

# Every variable through which some cluster of JAX's announces itself.
_CLUSTER_VARIABLES = (
    'SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID',
    'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK',
    'OMPI_COMM_WORLD_LOCAL_RANK', 'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
    'TPU_WORKER_ID', 'MEGASCALE_COORDINATOR_ADDRESS', 'MEGASCALE_NUM_SLICES', 'MEGASCALE_SLICE_ID',
    'KUBERNETES_SERVICE_HOST', 'JAX_COORDINATOR_ADDRESS')


@pytest.fixture
def starts(monkeypatch):
  """A machine in no cluster; returns the list of `jax.distributed.initialize` calls."""
  for name in _CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  return calls


def _cluster_name():
  cluster = parallel.detected_cluster()
  return cluster and cluster.__name__


def test_a_lone_machine_starts_nothing_and_asks_no_server(starts):
  began = time.monotonic()
  parallel.initialize()
  assert _cluster_name() is None and starts == []
  assert time.monotonic() - began < 10  # no metadata-server queries off a TPU VM


_SLURM = dict(SLURM_JOB_ID='77', SLURM_STEP_NODELIST='node[003-004]', SLURM_NTASKS='4',
              SLURM_PROCID='3', SLURM_LOCALID='1')
_OMPI = dict(OMPI_MCA_orte_hnp_uri='1531576320.0;tcp://10.96.0.1:34911',
             OMPI_COMM_WORLD_SIZE='2', OMPI_COMM_WORLD_RANK='1', OMPI_COMM_WORLD_LOCAL_RANK='1')
_GKE = dict(TPU_WORKER_HOSTNAMES='h0,h1,h2,h3', TPU_WORKER_ID='2', MEGASCALE_NUM_SLICES='1',
            MEGASCALE_SLICE_ID='0')


@pytest.mark.parametrize('variables,cluster,processes,process', [
    (_SLURM, 'SlurmCluster', 4, 3),
    (_OMPI, 'OmpiCluster', 2, 1),
    (_GKE, 'GkeTpuCluster', 4, 2),
])
def test_cluster_from_its_environment(starts, monkeypatch, variables, cluster, processes,
                                      process):
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)  # a TPU VM, for GKE
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  parallel.initialize()
  assert _cluster_name() == cluster
  assert starts == [((), {})]  # JAX then reads the same environment
  found = parallel.detected_cluster()
  assert (found.get_process_count(), found.get_process_id()) == (processes, process)


def _tpu_vm_metadata(monkeypatch, workers):
  """A Cloud TPU VM answering JAX's metadata-server queries as host 1 of `workers`."""
  answers = {'agent-worker-number': '1', 'worker-network-endpoints': ','.join(workers),
             'tpu-env': "ACCELERATOR_TYPE: 'v4-32'"}
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)
  monkeypatch.delenv('TPU_SKIP_MDS_QUERY', raising=False)  # set by JAX without TPU chips
  monkeypatch.setattr(cloud_tpu_cluster, 'get_metadata', lambda key: (answers[key], 200))


def test_tpu_vm_slice_from_the_metadata_server(starts, monkeypatch):
  _tpu_vm_metadata(monkeypatch, ['10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5'])
  parallel.initialize()
  assert _cluster_name() == 'GceTpuCluster' and starts == [((), {})]
  assert parallel.detected_cluster().get_process_id() == 1


def test_single_host_tpu_vm_and_single_task_run_alone(starts, monkeypatch):
  _tpu_vm_metadata(monkeypatch, ['10.0.0.2'])
  parallel.initialize()
  for name, value in {**_SLURM, 'SLURM_NTASKS': '1', 'SLURM_PROCID': '0'}.items():
    monkeypatch.setenv(name, value)
  parallel.initialize()
  assert starts == []


def test_flags_win_over_the_cluster(starts, monkeypatch):
  for name, value in _SLURM.items():
    monkeypatch.setenv(name, value)
  parallel.initialize('10.1.1.1:4321', 2, 1)
  assert starts == [(('10.1.1.1:4321', 2, 1), {})]


def _two_processes(tmp_path, name, workdir, data_dir, steps):
  """Starts 2 training processes of one device each; their stderr goes to files."""
  port = free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  procs = []
  for i in range(2):
    command = main_command(workdir, data_dir, f'--config.train_steps={steps}',
                           f'--coordinator_address=localhost:{port}', '--num_processes=2',
                           f'--process_id={i}')
    with open(tmp_path / f'{name}-{i}.err', 'w') as err:
      procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err))
  return procs


def _finish(procs, timeout=900):
  for p in procs:
    p.wait(timeout=timeout)
  return [p.returncode for p in procs]


def test_sigterm_to_one_process_stops_both_at_one_step(digits_data_dir, tmp_path):
  data.num_examples(data.dataset_spec('digits'), str(digits_data_dir), 'train')  # prepared
  steps, workdir = 12, tmp_path / 'run'
  # The uninterrupted run to compare with, meanwhile.
  straight = _two_processes(tmp_path, 'straight', tmp_path / 'straight', digits_data_dir, steps)
  procs = _two_processes(tmp_path, 'first', workdir, digits_data_dir, steps)
  err = lambda name, i: (tmp_path / f'{name}-{i}.err').read_text()
  # Once process 1 has joined (jax.distributed's SIGTERM handler is in place), preempt it
  # alone; process 0 never gets a signal.
  wait_until(procs[1], lambda: 'process 1 of 2' in err('first', 1), timeout=600)
  procs[1].send_signal(signal.SIGTERM)
  codes = _finish(procs)
  logs = [err('first', i) for i in range(2)]
  assert codes == [143, 143], '\n\n'.join(log[-2000:] for log in logs)
  stopped = [re.findall(r'Preempted \(SIGTERM\): saved step (\d+)', log) for log in logs]
  assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
  step = int(stopped[0][0])
  assert 1 <= step < steps and max(saved_steps(workdir / 'checkpoints')) == step

  assert _finish(_two_processes(tmp_path, 'again', workdir, digits_data_dir, steps)) == [0, 0]
  assert f'Resuming from step {step}' in err('again', 0)
  assert _finish(straight) == [0, 0], err('straight', 0)[-2000:]
  config = digits_config(digits_data_dir, method='scratch', train_steps=steps)
  mesh = parallel.make_mesh(jax.devices()[:2])
  jax.tree.map(np.testing.assert_array_equal, final_params(config, str(workdir), mesh),
               final_params(config, str(tmp_path / 'straight'), mesh))


def test_imagenet_hosts_read_disjoint_shards_that_cover_each_split(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from oracle_jax.data import fake_imagenet, streamed  # pylint: disable=g-import-not-at-top
  builder = fake_imagenet.prepare(tmp_path, classes=2, train_per_class=5, validation=7,
                                  shapes=((30, 40), (40, 30)))
  for split, examples in (('train', 10), ('validation', 7)):
    shards = [[ex['file_name'] for ex in tfds.as_numpy(streamed.process_shard(
        builder, split, process_index=i, process_count=2))] for i in range(2)]
    assert [len(s) for s in shards] == [(examples + 1) // 2, examples // 2]
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == examples
  # The eval iterator of each of 2 simulated hosts: as many batches on both, every
  # validation image once.
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  masks = []
  for i in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda i=i: i)
    batches = list(streamed.eval_iterator(data.dataset_spec('imagenet2012'), data_dir=str(tmp_path),
                                          global_batch_size=4, split='validation'))
    assert {b['image'].shape for b in batches} == {(2, 224, 224, 3)}
    masks.append([b['mask'].tolist() for b in batches])
  assert masks == [[[True, True], [True, True]], [[True, True], [True, False]]]
