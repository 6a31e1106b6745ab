#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, each driving all of its
# GPUs; `srun` sets SLURM_* variables from which jax.distributed.initialize() finds the
# coordinator, the process count and this process's index.
#
#   sbatch --nodes=4 launch/slurm.sh --config=configs/imagenet_r34_r18.py --workdir=/shared/runs/r34_r18
#
# The workdir and TFDS data dir (--config.data_dir=…) must be on a shared filesystem.
#SBATCH --job-name=oracle_jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@300
# (SIGTERM 5 minutes before the time limit: the run saves a checkpoint and exits; resubmit
# the same command to resume.)
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
srun python launch/main.py "$@"
