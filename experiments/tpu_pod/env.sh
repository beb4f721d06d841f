# shellcheck shell=bash
# Settings shared by the Cloud TPU pod scripts. Every value can be overridden from the
# environment, e.g. `ACCELERATOR_TYPE=v5p-32 ZONE=us-east5-a ./create.sh`.
# Sourced by create.sh, setup.sh, launch.sh, logs.sh, stop.sh and delete.sh.

# Google Cloud project (default: gcloud's configured project).
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
# Zone that offers the accelerator type (v4: us-central2-b; v5e: us-west4-a; v5p: us-east5-a).
ZONE="${ZONE:-us-central2-b}"
# Name of the TPU VM (a pod slice: one VM per worker host).
TPU_NAME="${TPU_NAME:-diffusion-jax}"
# Pod slice: v4-32 = 16 chips on 4 hosts. v4-8 is a single host.
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
# TPU VM software version (v4: tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite;
# v5p: v2-alpha-tpuv5; v6e: v2-alpha-tpuv6e).
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
# 1 = spot capacity (cheaper, can be preempted; runs resume from their checkpoints).
SPOT="${SPOT:-0}"

# Where the code comes from: a git URL (cloned on every worker), or empty to copy this
# checkout (`git archive HEAD`) to the workers.
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
# Directory of the code on the workers (relative to the home directory).
REMOTE_DIR="${REMOTE_DIR:-diffusion_jax}"
# JAX release installed with its TPU runtime; keep it in the range setup.py allows.
JAX_VERSION="${JAX_VERSION:-0.10.2}"

# The run: config file (optionally :arg) and a workdir every worker can reach. Checkpoints
# and summaries go there, so use a Cloud Storage bucket in the TPU's region.
CONFIG="${CONFIG:-configs/imagenet64.py}"
WORKDIR="${WORKDIR:-}"
# Training log and process id on every worker.
REMOTE_LOG="${REMOTE_LOG:-diffusion_jax_train.log}"
REMOTE_PID="${REMOTE_PID:-diffusion_jax_train.pid}"

# 1 = print the gcloud commands instead of running them.
DRY_RUN="${DRY_RUN:-0}"

# Runs a command, or prints it (shell-quoted) when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Exits with a message unless the named variable is set.
require() {
  local name="$1" hint="$2"
  if [[ -z "${!name:-}" ]]; then
    echo "error: ${name} is not set. ${hint}" >&2
    exit 1
  fi
}

# Runs a shell command on the workers (default all of them; WORKER=0 for the first).
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" \
    --project="${PROJECT}" --zone="${ZONE}" --worker="${WORKER:-all}" --command="$1"
}

require PROJECT "Set PROJECT=<your project> or run 'gcloud config set project <your project>'."
