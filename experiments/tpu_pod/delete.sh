#!/usr/bin/env bash
# Deletes the TPU VM (stops billing). Data in WORKDIR (Cloud Storage) is kept.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
run gcloud compute tpus tpu-vm delete "${TPU_NAME}" \
  --project="${PROJECT}" --zone="${ZONE}" --quiet
