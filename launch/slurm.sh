#!/usr/bin/env bash
# Multi-node GPU training under SLURM, one process per GPU (what JAX's SLURM detection
# expects: task i of a node drives that node's GPU i). `srun` gives every task the SLURM_*
# variables from which jax.distributed finds the coordinator, the process count and its
# own index. Submit from the repository's root; arguments go to launch/main.py unchanged,
# or, after a first argument `sweep`, to launch/sweep.py (a grid of runs):
#
#   sbatch --nodes=4 launch/slurm.sh --config=configs/imagenet_r34_r18.py \
#     --workdir=/shared/runs/r34_r18 --config.data_dir=/shared/tensorflow_datasets
#   sbatch --nodes=1 launch/slurm.sh sweep --config=configs/cifar.py:resnet56,resnet20 \
#     --workdir=/shared/runs/sweep --methods=kd,oracle_kd --seeds=0,1,2,3
#
# The workdir and the TFDS data dir must be on a filesystem every node sees. PYTHON
# (default: python) is the interpreter with the requirements installed.
#SBATCH --job-name=oracle_jax
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@300
# (SIGTERM to every task 5 minutes before the time limit: together they save one step and
# exit; submitting the same command again resumes.)
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
entry=launch/main.py
if [[ "${1:-}" == sweep ]]; then
  entry=launch/sweep.py
  shift
fi
srun "${PYTHON:-python}" "$entry" "$@"
