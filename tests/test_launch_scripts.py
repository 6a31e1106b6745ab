"""launch/tpu_pod.sh and launch/slurm.sh, run through stub `gcloud` and `srun` commands.

The stubs stand in for the cluster: the `gcloud` one runs the `--command` of
`tpu-vm ssh` here, in a home directory holding the repository as `setup` leaves it on a
TPU host; the `srun` one starts SLURM_NTASKS local tasks with the variables srun gives
each task, from which JAX's own SLURM detection starts `jax.distributed`. Every run is
a `--dry_run`, so the plan printed by launch/main.py shows what arrived there.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, digits_config, free_port

from oracle_jax import checkpoints, data, models, parallel, sweep

_GCLOUD = r'''#!/usr/bin/env bash
# Stub gcloud: records its arguments; `... ssh ... --command=CMD` runs CMD in $HOME
# (unless GCLOUD_RECORD_ONLY is set).
printf '%s\n' "$*" >> "$GCLOUD_CALLS"
[[ -z "${GCLOUD_RECORD_ONLY:-}" ]] || exit 0
for arg in "$@"; do
  if [[ "$arg" == --command=* ]]; then cd "$HOME" && exec bash -c "${arg#--command=}"; fi
done
'''

_SRUN = r'''#!/usr/bin/env bash
# Stub srun: SLURM_NTASKS local tasks of one job step on this node; task i writes
# $SRUN_OUT/task-i.out and .err. With SRUN_CALLS set, it records its directory and
# arguments there instead.
set -euo pipefail
if [[ -n "${SRUN_CALLS:-}" ]]; then printf '%s\n' "$PWD" "$*" >> "$SRUN_CALLS"; exit 0; fi
export SLURM_STEP_NODELIST=localhost SLURM_NODELIST=localhost SLURM_STEP_NUM_NODES=1 \
  SLURM_STEP_NUM_TASKS=$SLURM_NTASKS SLURM_STEP_ID=0 SLURM_NODEID=0
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" > "$SRUN_OUT/task-$i.out" 2> "$SRUN_OUT/task-$i.err" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
'''

_SBATCH = r'''#!/usr/bin/env bash
# Stub sbatch: runs the batch script at once, as the allocation's first node would, with
# the variables sbatch sets (8 tasks per node, as launch/slurm.sh asks).
set -euo pipefail
nodes=1
while [[ "$1" == --* ]]; do
  if [[ "$1" == --nodes=* ]]; then nodes=${1#--nodes=}; fi
  shift
done
export SLURM_SUBMIT_DIR=$PWD SLURM_JOB_ID=4243 SLURM_NTASKS=$((nodes * 8))
exec bash "$@"
'''

# `run`'s arguments in the DRY_RUN tests, one with a quote and spaces.
_ARGS = ['--config=configs/default.py', '--config.train_steps=3',
         "--config.teacher.checkpoint=/runs/it's a teacher", '--dry_run']


def _executable(path, text):
  path.write_text(text)
  path.chmod(0o755)
  return path


def _plan(stdout):
  """The JSON plan that `--dry_run` prints last."""
  return json.loads(stdout[stdout.rindex('\n{\n') + 1:] if '\n{\n' in stdout else stdout)


@pytest.fixture(scope='module')
def prepared_digits(digits_data_dir):
  """The digits prepared before any test starts processes that read them at once."""
  data.num_examples(data.dataset_spec('digits'), str(digits_data_dir), 'train')
  return str(digits_data_dir)


@pytest.fixture(scope='module')
def teacher_with_space(tmp_path_factory):
  """An untrained resnet20 digits teacher (the default config's) in a path with a space."""
  variables = models.create('resnet20', 10).init(jax.random.key(0), np.zeros((1, 8, 8, 1)))
  path = tmp_path_factory.mktemp('teachers') / 'a b'
  checkpoints.save_model(path, jax.device_get(variables), model='resnet20', num_classes=10)
  return str(path)


def _environment(tmp_path, **extra):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  _executable(bin_dir / 'gcloud', _GCLOUD)
  _executable(bin_dir / 'srun', _SRUN)
  _executable(bin_dir / 'sbatch', _SBATCH)
  return {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
          'PYTHON': sys.executable, 'GCLOUD_CALLS': str(tmp_path / 'gcloud_calls'),
          'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
          **extra}


def _tpu_host(tmp_path, data_dir):
  """The environment of `tpu_pod.sh` whose stub `gcloud` runs on a "TPU host" here: a home
  holding the repository where `setup` copies it, and DATA_DIR."""
  home = tmp_path / 'home'
  home.mkdir()
  (home / os.path.basename(REPO)).symlink_to(REPO)
  return home, _environment(tmp_path, HOME=str(home), DATA_DIR=data_dir)


def test_tpu_pod_run_passes_arguments_intact(tmp_path, prepared_digits, teacher_with_space):
  home, env = _tpu_host(tmp_path, prepared_digits)
  proc = subprocess.run(
      [os.path.join(REPO, 'launch', 'tpu_pod.sh'), 'run', '--config=configs/default.py',
       '--config.train_steps=3', f'--config.teacher.checkpoint={teacher_with_space}',
       '--dry_run'], env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = _plan(proc.stdout)
  assert (plan['steps'], plan['processes'], plan['devices']) == (3, 1, 2)
  assert plan['teacher_checkpoint'] == teacher_with_space  # the space arrived intact
  assert plan['dataset'] == 'digits'
  assert not (home / 'tensorflow_datasets').exists()  # the data came from DATA_DIR
  calls = (tmp_path / 'gcloud_calls').read_text().splitlines()
  assert len(calls) == 1 and calls[0].startswith(
      'compute tpus tpu-vm ssh oracle-jax --zone=us-central2-b --worker=all --command=cd ~/')


def test_tpu_pod_sweep_plans_its_populations_on_the_host(tmp_path, prepared_digits,
                                                       teacher_with_space):
  _, env = _tpu_host(tmp_path, prepared_digits)
  proc = subprocess.run(
      [os.path.join(REPO, 'launch', 'tpu_pod.sh'), 'sweep', '--config=configs/default.py',
       f'--config.teacher.checkpoint={teacher_with_space}',
       f'--workdir={tmp_path / "sweep"}', '--methods=kd,oracle_kd,fitnet', '--seeds=0,1',
       '--dry_run'], env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = _plan(proc.stdout)
  assert (plan['runs'], plan['devices'], plan['teacher_checkpoint']) == (
      6, 2, teacher_with_space)
  assert plan['groups'] == [
      {'runs': ['kd_seed0', 'kd_seed1', 'oracle_kd_seed0', 'oracle_kd_seed1'],
       'mesh': {'member': 2, 'data': 1}},
      {'runs': ['fitnet_seed0', 'fitnet_seed1'], 'mesh': {'member': 2, 'data': 1}}]
  assert not (tmp_path / 'sweep').exists()  # a dry run writes nothing


def _dry_run(tmp_path, *args, **settings):
  env = _environment(tmp_path, DRY_RUN='1', TPU_NAME='oj', ZONE='europe-west4-a',
                     ACCELERATOR='v5p-16', VERSION='v2-alpha-tpuv5', PYTHON='python3')
  env.pop('DATA_DIR', None)
  env.update(settings)
  proc = subprocess.run([os.path.join(REPO, 'launch', 'tpu_pod.sh'), *args], env=env,
                        capture_output=True, text=True, timeout=60, check=True)
  assert not (tmp_path / 'gcloud_calls').exists()  # printed, not run
  return proc.stdout


def test_tpu_pod_dry_run_prints_gcloud_commands(tmp_path):
  name = os.path.basename(REPO)
  ssh = 'gcloud compute tpus tpu-vm ssh oj --zone=europe-west4-a --worker=all'
  assert _dry_run(tmp_path, 'create') == (
      'gcloud compute tpus tpu-vm create oj --zone=europe-west4-a '
      '--accelerator-type=v5p-16 --version=v2-alpha-tpuv5\n')
  assert _dry_run(tmp_path, 'setup') == (
      f'gcloud compute tpus tpu-vm scp --recurse --zone=europe-west4-a --worker=all {REPO} oj:~/\n'
      f"{ssh} '--command=cd ~/{name} && python3 -m pip install -r requirements.txt "
      "'\\''jax[tpu]'\\'''\n")
  assert _dry_run(tmp_path, 'run', *_ARGS, DATA_DIR='gs://b/tensorflow_datasets') == (
      f"{ssh} '--command=cd ~/{name} && python3 launch/main.py --config=configs/default.py "
      "--config.train_steps=3 --config.teacher.checkpoint=/runs/it\\'\\''s\\ a\\ teacher "
      "--dry_run --config.data_dir=gs://b/tensorflow_datasets'\n")
  # The user's data dir wins over DATA_DIR; nothing is appended then.
  assert _dry_run(tmp_path, 'run', '--config.data_dir=/d', DATA_DIR='gs://b/t') == (
      f"{ssh} '--command=cd ~/{name} && python3 launch/main.py --config.data_dir=/d'\n")
  assert _dry_run(tmp_path, 'sweep', '--methods=kd,oracle_kd', DATA_DIR='gs://b/t') == (
      f"{ssh} '--command=cd ~/{name} && python3 launch/sweep.py --methods=kd\\,oracle_kd "
      "--config.data_dir=gs://b/t'\n")  # bash's printf %q escapes commas
  assert _dry_run(tmp_path, 'delete') == (
      'gcloud compute tpus tpu-vm delete oj --zone=europe-west4-a --quiet\n')


def test_tpu_pod_dry_run_line_runs_as_printed(tmp_path):
  """The printed command, pasted into a shell, gives gcloud the same arguments."""
  line = _dry_run(tmp_path, 'run', *_ARGS)
  subprocess.run(['bash', '-c', line], env=_environment(tmp_path, HOME=str(tmp_path)),
                 check=False, timeout=60, capture_output=True)
  call = (tmp_path / 'gcloud_calls').read_text()
  assert call.startswith('compute tpus tpu-vm ssh oj --zone=europe-west4-a --worker=all '
                         '--command=cd ~/')
  assert call.endswith("--config.teacher.checkpoint=/runs/it\\'s\\ a\\ teacher --dry_run\n")


def test_slurm_two_tasks_start_jax_distributed(tmp_path, prepared_digits, teacher_with_space):
  out = tmp_path / 'srun'
  out.mkdir()
  # As sbatch leaves them for the batch script: the job, its task count, its directory.
  env = _environment(tmp_path, SLURM_JOB_ID='4242', SLURM_NTASKS='2', SLURM_SUBMIT_DIR=REPO,
                     SRUN_OUT=str(out), JAX_COORDINATOR_PORT=str(free_port()))
  proc = subprocess.run(
      ['bash', os.path.join(REPO, 'launch', 'slurm.sh'), '--config=configs/default.py',
       '--config.train_steps=3', f'--config.teacher.checkpoint={teacher_with_space}',
       f'--config.data_dir={prepared_digits}', '--dry_run'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
  errs = [(out / f'task-{i}.err').read_text() for i in range(2)]
  assert proc.returncode == 0, '\n\n'.join(e[-2000:] for e in errs)
  for i in range(2):
    plan = _plan((out / f'task-{i}.out').read_text())
    assert (plan['steps'], plan['processes'], plan['devices']) == (3, 2, 4)
    assert plan['teacher_checkpoint'] == teacher_with_space
    assert f'process {i} of 2, 4 devices (2 here); detected by JAX as SlurmCluster' in errs[i]


def test_slurm_sweep_splits_a_population_over_two_processes(tmp_path, prepared_digits,
                                                          digits_teacher_dir):
  """`launch/slurm.sh sweep`: 2 tasks × 2 devices train kd, oracle_kd and scratch × 2 seeds
  as one population (mesh 2 members × 2 batch shards, each process holding 3 members and
  reading every member's batches); each member's results are those of the same population
  on 4 devices of one process."""
  out = tmp_path / 'srun'
  out.mkdir()
  env = _environment(tmp_path, SLURM_JOB_ID='4242', SLURM_NTASKS='2', SLURM_SUBMIT_DIR=REPO,
                     SRUN_OUT=str(out), JAX_COORDINATOR_PORT=str(free_port()))
  overrides = {'teacher.model': 'resnet8', 'teacher.checkpoint': digits_teacher_dir,
               'method': 'kd', 'train_steps': 4}
  config = digits_config(prepared_digits, **overrides)
  flags = [f'--config.{k}={v}' for k, v in dict(
      data_dir=prepared_digits, batch_size=16, eval_batch_size=64,
      log_every_steps=2, checkpoint_every_steps=2, **{'student.model': 'resnet8'},
      **overrides).items()]
  names, seeds = ['kd', 'oracle_kd', 'scratch'], [0, 1]
  proc = subprocess.run(
      ['bash', os.path.join(REPO, 'launch', 'slurm.sh'), 'sweep', '--config=configs/default.py',
       *flags, f'--workdir={tmp_path / "two"}', f'--methods={",".join(names)}', '--seeds=0,1'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
  errs = [(out / f'task-{i}.err').read_text() for i in range(2)]
  assert proc.returncode == 0, '\n\n'.join(e[-2000:] for e in errs)
  for i in range(2):
    assert f'process {i} of 2, 4 devices (2 here); detected by JAX as SlurmCluster' in errs[i]
  assert len(list((tmp_path / 'two' / 'populations').iterdir())) == 1

  one = sweep.run_grid(config, str(tmp_path / 'one'), names, seeds,
                       mesh=parallel.make_mesh(jax.devices()[:4]))
  for name in names:
    for seed, expected in zip(seeds, one[name]):
      got = json.loads((tmp_path / 'two' / f'{name}_seed{seed}' / 'results.json').read_text())
      assert got['final_train_loss'] == pytest.approx(expected['final_train_loss'], rel=1e-6)
      assert got['final_top1'] == expected['final_top1']
      assert {**got, 'final_train_loss': 0} == {**expected, 'final_train_loss': 0}
  table = sweep.report(one, 'kd')
  assert table.startswith('Dataset digits.\n\n| method |')
  assert (tmp_path / 'two' / 'sweep.md').read_text() == table + '\n'  # process 0's
  assert table in (out / 'task-0.out').read_text()
  assert '| method |' not in (out / 'task-1.out').read_text()


def _doc_block(title, doc='docs/clusters.md'):
  """The first bash block after the heading `title` in a page of the documentation."""
  with open(os.path.join(REPO, doc)) as f:
    text = f.read()
  after = text[text.index(f'## {title}\n'):]
  start = after.index('```bash\n') + len('```bash\n')
  return after[start:after.index('\n```', start)]


def test_docs_tpu_recipe(tmp_path):
  env = _environment(tmp_path, GCLOUD_RECORD_ONLY='1')
  for name in ('TPU_NAME', 'ZONE', 'ACCELERATOR', 'VERSION', 'DATA_DIR', 'PYTHON', 'DRY_RUN'):
    env.pop(name, None)
  subprocess.run(['bash', '-euo', 'pipefail', '-c', _doc_block('TPU VM slice')], cwd=REPO,
                 env=env, check=True, timeout=60)
  ssh = 'compute tpus tpu-vm ssh oj --zone=us-central2-b --worker=all --command=cd ~/'
  name = os.path.basename(REPO)
  assert (tmp_path / 'gcloud_calls').read_text().splitlines() == [
      'compute tpus tpu-vm create oj --zone=us-central2-b --accelerator-type=v4-32 '
      '--version=tpu-ubuntu2204-base',
      f'compute tpus tpu-vm scp --recurse --zone=us-central2-b --worker=all {REPO} oj:~/',
      f"{ssh}{name} && python3 -m pip install -r requirements.txt 'jax[tpu]'",
      f'{ssh}{name} && python3 launch/main.py --config=configs/imagenet_r34_r18.py '
      '--workdir=gs://BUCKET/runs/r34_r18 --config.data_dir=gs://BUCKET/tensorflow_datasets',
      f'{ssh}{name} && python3 launch/sweep.py --config=configs/cifar.py:resnet56\\,resnet20 '
      '--workdir=gs://BUCKET/sweep --methods=kd\\,oracle_kd --seeds=0\\,1\\,2\\,3 '
      '--config.data_dir=gs://BUCKET/tensorflow_datasets',
      'compute tpus tpu-vm delete oj --zone=us-central2-b --quiet']


def test_docs_slurm_recipe(tmp_path):
  calls = tmp_path / 'srun_calls'
  env = _environment(tmp_path, SRUN_CALLS=str(calls))
  env.pop('PYTHON')
  subprocess.run(['bash', '-euo', 'pipefail', '-c', _doc_block('SLURM GPU cluster')],
                 cwd=REPO, env=env, check=True, timeout=60)
  assert calls.read_text().splitlines() == [
      REPO, 'python launch/main.py --config=configs/imagenet_r34_r18.py '
      '--workdir=/shared/runs/r34_r18 --config.data_dir=/shared/tensorflow_datasets',
      REPO, 'python launch/sweep.py --config=configs/cifar.py:resnet56,resnet20 '
      '--workdir=/shared/runs/sweep --config.data_dir=/shared/tensorflow_datasets '
      '--methods=kd,oracle_kd --seeds=0,1,2,3']


def test_docs_cpu_student_command(tmp_path):
  """The CPU recipe's second line, as a dry run, where the first one leaves its teacher."""
  for name in ('launch', 'configs', 'oracle_jax'):
    (tmp_path / name).symlink_to(os.path.join(REPO, name))
  variables = models.create('resnet20', 10).init(jax.random.key(0), np.zeros((1, 8, 8, 1)))
  checkpoints.save_model(tmp_path / 'runs/default/teacher_run/teacher',
                         jax.device_get(variables), model='resnet20', num_classes=10)
  line = _doc_block('CPU').splitlines()[1]
  assert line.startswith('python launch/main.py ')
  proc = subprocess.run(f'{sys.executable} {line[len("python "):]} --dry_run', shell=True,
                        cwd=tmp_path, env=_environment(tmp_path, HOME=str(tmp_path)),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = _plan(proc.stdout)
  assert (plan['method'], plan['teacher'], plan['student'], plan['steps']) == (
      'kd', 'resnet20', 'resnet8', 300)
