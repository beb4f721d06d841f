#!/usr/bin/env bash
# Installs the code, JAX with its TPU runtime and the package on every worker, then checks
# that all hosts see the whole slice.
#
#   ./setup.sh                                   # copies this checkout (git archive HEAD)
#   REPO_URL=https://github.com/you/diffusion_jax.git REPO_REF=main ./setup.sh
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

remote_dir="$(printf '%q' "${REMOTE_DIR}")"
if [[ -n "${REPO_URL}" ]]; then
  url="$(printf '%q' "${REPO_URL}")"
  ref="$(printf '%q' "${REPO_REF}")"
  fetch="if [ -d ${remote_dir}/.git ]; then
  git -C ${remote_dir} fetch --depth 1 origin ${ref} && git -C ${remote_dir} checkout -q FETCH_HEAD
else
  git clone --depth 1 --branch ${ref} ${url} ${remote_dir}
fi"
else
  # Copy the committed state of this checkout to every worker.
  repo_root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
  tmpdir="$(mktemp -d)"
  trap 'rm -rf "${tmpdir}"' EXIT
  archive="${tmpdir}/diffusion_jax.tar.gz"
  run git -C "${repo_root}" archive --format=tar.gz -o "${archive}" HEAD
  run gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:diffusion_jax.tar.gz" \
    --project="${PROJECT}" --zone="${ZONE}" --worker=all
  fetch="rm -rf ${remote_dir} && mkdir -p ${remote_dir} && tar -xzf diffusion_jax.tar.gz -C ${remote_dir}"
fi

jax_version="$(printf '%q' "${JAX_VERSION}")"
tpu_ssh "set -euo pipefail
${fetch}
python3 -m pip install --upgrade pip
python3 -m pip install \"jax[tpu]==${jax_version}\"
python3 -m pip install -e ${remote_dir}
python3 -c 'import jax; print(\"process\", jax.process_index(), \"of\", jax.process_count(), \"sees\", jax.device_count(), \"devices\", jax.devices()[0].device_kind)'"

echo "Installed on every worker of ${TPU_NAME}. Next: WORKDIR=gs://<bucket>/<run> ./launch.sh"
