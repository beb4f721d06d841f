#!/usr/bin/env bash
# Starts training on every worker of the slice. main.py sees a multi-host TPU
# (TPU_WORKER_HOSTNAMES) and calls jax.distributed.initialize(); only process 0 writes
# summaries and images. Extra arguments go to main.py.
#
#   WORKDIR=gs://my-bucket/imagenet64 CONFIG=configs/imagenet64.py ./launch.sh
#   WORKDIR=gs://my-bucket/run2 ./launch.sh --config.training.batch_size=2048
#   FOREGROUND=1 ...  # stream every worker's output here instead of detaching
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
require WORKDIR "Set WORKDIR=gs://<bucket>/<run>: a directory every worker can write (checkpoints, summaries)."

args=("--config=${CONFIG}" "--workdir=${WORKDIR}" "$@")
quoted=""
for a in "${args[@]}"; do
  quoted+=" $(printf '%q' "${a}")"
done
remote_dir="$(printf '%q' "${REMOTE_DIR}")"
log="$(printf '%q' "${REMOTE_LOG}")"
pid="$(printf '%q' "${REMOTE_PID}")"

if [[ "${FOREGROUND:-0}" == "1" ]]; then
  tpu_ssh "cd ${remote_dir} && python3 main.py${quoted}"
else
  # nohup: the run outlives the ssh session; its pid is kept for stop.sh.
  tpu_ssh "cd ${remote_dir} && nohup python3 main.py${quoted} > ~/${log} 2>&1 < /dev/null &
echo \$! > ~/${pid}; echo \"started pid \$(cat ~/${pid}) on \$(hostname)\""
  echo "Started on every worker of ${TPU_NAME}. Follow it with ./logs.sh; stop it with ./stop.sh."
fi
