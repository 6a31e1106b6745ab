#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: one process per host, every host runs the same command
# and JAX finds the slice by itself (no coordinator flags needed).
#
#   launch/tpu_pod.sh create      # create the slice
#   launch/tpu_pod.sh setup       # copy this repository to every host, install requirements
#   launch/tpu_pod.sh run --config=configs/imagenet_r34_r18.py --workdir=gs://BUCKET/runs/r34_r18
#   launch/tpu_pod.sh sweep --config=configs/cifar.py:resnet56,resnet20 --workdir=gs://BUCKET/sweep
#   launch/tpu_pod.sh delete
#
# `run` passes its arguments to launch/main.py unchanged, in order (quoting and spaces
# kept), followed by --config.data_dir=$DATA_DIR when DATA_DIR is set and the arguments
# give no --config.data_dir; `sweep` does the same with launch/sweep.py (a grid of runs,
# populations split over the slice). Rerunning the same command resumes from the workdir.
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32), VERSION (TPU VM
# runtime), DATA_DIR (TFDS data dir, e.g. gs://BUCKET/tensorflow_datasets), PYTHON on the
# hosts (python3); DRY_RUN=1 prints the gcloud commands instead of running them.
# Workdir and data dir must be storage every host sees: gs:// URLs work for both.
set -euo pipefail

TPU_NAME=${TPU_NAME:-oracle-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# `setup` copies the repository into each host's home directory under this name.
REMOTE_REPO="~/$(printf '%q' "$(basename "$REPO")")"

# Runs gcloud, or prints the command when DRY_RUN=1: one line to copy into a shell, words
# that need it in single quotes (by hand: macOS's bash 3.2 has no ${word@Q}).
gcloud_() {
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    gcloud "$@"
    return
  fi
  local plain='^[A-Za-z0-9_./:=,@%+-][A-Za-z0-9_./:=,@%+~-]*$' line=gcloud word
  for word in "$@"; do
    if [[ "$word" =~ $plain ]]; then
      line+=" $word"
    else
      line+=" '${word//"'"/"'\\''"}'"
    fi
  done
  printf '%s\n' "$line"
}

on_every_host() {
  gcloud_ compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

# ' ARG…': the user's arguments quoted for the remote shell, then the data dir if needed.
main_arguments() {
  local arg has_data_dir=0
  for arg in "$@"; do
    [[ "$arg" == --config.data_dir || "$arg" == --config.data_dir=* ]] && has_data_dir=1
  done
  if (( $# )); then
    printf ' %q' "$@"
  fi
  if [[ -n "${DATA_DIR:-}" && "$has_data_dir" == 0 ]]; then
    printf ' %q' "--config.data_dir=$DATA_DIR"
  fi
}

case "${1:-}" in
  create)
    gcloud_ compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ;;
  setup)
    gcloud_ compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all "$REPO" "$TPU_NAME":~/
    on_every_host "cd $REMOTE_REPO && $PYTHON -m pip install -r requirements.txt 'jax[tpu]'" ;;
  run)
    shift
    on_every_host "cd $REMOTE_REPO && $PYTHON launch/main.py$(main_arguments "$@")" ;;
  sweep)
    shift
    on_every_host "cd $REMOTE_REPO && $PYTHON launch/sweep.py$(main_arguments "$@")" ;;
  delete)
    gcloud_ compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *)
    sed -n '2,18p' "$0"; exit 2 ;;
esac
