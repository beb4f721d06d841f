#!/usr/bin/env bash
# Stops the run started by launch.sh on every worker (by its recorded pid). A stopped
# run resumes from its latest checkpoint when launched again with the same WORKDIR.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
pid="$(printf '%q' "${REMOTE_PID}")"
tpu_ssh "if [ -f ~/${pid} ]; then kill \$(cat ~/${pid}) 2>/dev/null || true; rm -f ~/${pid}; fi"
