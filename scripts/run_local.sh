#!/usr/bin/env bash
# Run the training image on this machine the way SageMaker runs it, with no AWS at all.
#
#   scripts/run_local.sh JOB_DIR [IMAGE]
#
# JOB_DIR is an /opt/ml tree: at least input/data/tasks/tasks.jsonl, input/data/model/ (a
# diffusers pipeline folder) and input/data/images/<folders>; input/config/hyperparameters.json
# is optional (all training defaults). Results land in JOB_DIR/model, JOB_DIR/checkpoints and
# JOB_DIR/output. Run it again after a stop: finished tasks are kept, the interrupted one resumes.
# Ctrl-C stops it the way SageMaker does (SIGTERM): state is saved first.
#
# Environment: CONTAINER_ENGINE=docker|podman (default: docker, else podman), CONTAINER_RUN_FLAGS
# (extra words for `run`, e.g. "--runtime runc" where crun cannot run), RUN_LOCAL_USER (uid:gid
# to run as; default: yours).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
job_dir=$(cd "$1" && pwd)
image=${2:-lora-fanout}

for need in input/data/tasks input/data/model; do
  if [[ ! -d "$job_dir/$need" ]]; then
    echo "run_local.sh: $job_dir/$need is missing (see --help)" >&2
    exit 2
  fi
done

engine=${CONTAINER_ENGINE:-}
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null 2>&1; then engine=docker; elif command -v podman >/dev/null 2>&1; then engine=podman; fi
fi
if [[ -z "$engine" ]] || ! command -v "$engine" >/dev/null 2>&1; then
  echo "run_local.sh: no container engine: install docker or podman, or set CONTAINER_ENGINE" >&2
  exit 2
fi
read -r -a extra <<< "${CONTAINER_RUN_FLAGS:-}"

gpus=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # podman reaches the GPU through CDI (nvidia-ctk cdi generate), docker through its runtime hook.
  if [[ "$(basename "$engine")" == podman ]]; then gpus=(--device nvidia.com/gpu=all); else gpus=(--gpus all); fi
else
  echo "run_local.sh: no NVIDIA GPU found; running on CPU (slow)" >&2
fi

tty=()
[[ -t 0 && -t 1 ]] && tty=(-it)  # a progress bar and Ctrl-C forwarding when run from a terminal

# --init is not used on purpose: `train` is PID 1 and handles SIGTERM itself, as on SageMaker.
# --stop-timeout 120 matches SageMaker's grace period between SIGTERM and SIGKILL.
# --user: the results in JOB_DIR belong to whoever ran this, not to root.
# --ulimit: explicit limits that podman, unlike docker, does not always inherit in a usable form.
# Without a terminal the engine forwards SIGTERM/SIGINT it receives to `train` (sig-proxy).
exec "$engine" run --rm "${tty[@]}" "${gpus[@]}" "${extra[@]}" \
  --user "${RUN_LOCAL_USER:-$(id -u):$(id -g)}" -e HOME=/tmp \
  --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  --shm-size 2g \
  --stop-timeout 120 \
  -v "$job_dir:/opt/ml" \
  "$image" train
