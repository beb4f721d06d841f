#!/usr/bin/env bash
# Shows the end of the training log (worker 0 by default; WORKER=all for every worker).
#
#   ./logs.sh            # last 50 lines of worker 0
#   TAIL_LINES=200 WORKER=all ./logs.sh
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
WORKER="${WORKER:-0}"
lines="$(printf '%q' "${TAIL_LINES:-50}")"
tpu_ssh "tail -n ${lines} ~/$(printf '%q' "${REMOTE_LOG}")"
