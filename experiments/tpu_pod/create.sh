#!/usr/bin/env bash
# Creates the TPU VM pod slice (one VM per host) for training.
#
#   PROJECT=my-project ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 ./create.sh
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

extra=()
if [[ "${SPOT}" == "1" ]]; then
  extra+=(--spot)
fi

run gcloud compute tpus tpu-vm create "${TPU_NAME}" \
  --project="${PROJECT}" \
  --zone="${ZONE}" \
  --accelerator-type="${ACCELERATOR_TYPE}" \
  --version="${TPU_VERSION}" \
  "${extra[@]}"

echo "Created ${TPU_NAME} (${ACCELERATOR_TYPE}) in ${ZONE}. Next: ./setup.sh"
