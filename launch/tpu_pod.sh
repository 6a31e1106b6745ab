#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: one process per host, JAX's runtime auto-detects the
# slice (no coordinator flags needed), every host runs the same command.
#
#   launch/tpu_pod.sh create                      # create the slice
#   launch/tpu_pod.sh setup                       # copy the repo, install requirements
#   launch/tpu_pod.sh run --config=configs/imagenet_r34_r18.py --workdir=gs://BUCKET/runs/r34_r18
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32), VERSION (TPU VM
# runtime), DATA_DIR (TFDS data dir on GCS, e.g. gs://BUCKET/tensorflow_datasets).
# The workdir and data dir must be storage every host sees: gs:// URLs work for both.
set -euo pipefail
TPU_NAME=${TPU_NAME:-oracle-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
DATA_DIR=${DATA_DIR:?set DATA_DIR to a gs:// TFDS data dir}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ;;
  setup)
    gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all "$REPO" "$TPU_NAME":~/
    ssh_all "cd ~/$(basename "$REPO") && pip install -r requirements.txt 'jax[tpu]' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html" ;;
  run)
    shift
    ssh_all "cd ~/$(basename "$REPO") && python launch/main.py --config.data_dir=$DATA_DIR $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
