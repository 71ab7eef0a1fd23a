#!/usr/bin/env bash
# `make image-test`: build the real Dockerfile and run `train` in it the way SageMaker does, on
# this machine, with no registry (Debian's buildah/podman/runc/mmdebstrap, root, Linux).
#
#  1. a stand-in base image: a minimal Debian (mmdebstrap) + a venv with the CPU torch of
#     requirements/torch.txt on PATH, no compiler, no Python headers. Built once and kept, keyed
#     by its recipe, in podman's storage and $IMAGE_TEST_CACHE (default /var/cache/lora-fanout).
#  2. the project's Dockerfile built against it (--build-arg BASE_IMAGE), unchanged.
#  3. what the image holds: every locked version, no source tree, no compiler.
#  4. `train` on a 2-task, 1-host /opt/ml job as a non-root user, through scripts/run_local.sh;
#     model/, checkpoints/ and output/ checked on the host side.
#  5. a long task stopped with SIGTERM: exit 143 and the resume state saved.
# Any failed step stops the run with its reason and exit 1.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
CACHE=${IMAGE_TEST_CACHE:-/var/cache/lora-fanout/image-test}
WORK=$ROOT/build/image-test
IMAGE=localhost/lora-fanout:image-test
USER_ID=${IMAGE_TEST_USER:-1000:1000}
# crun refuses this kind of machine's cgroup setup; runc works, given explicit limits (podman's
# defaults are above what this sandbox may set). The job needs no network.
BUILD_FLAGS=(--pull=never --isolation oci --runtime runc)
RUN_FLAGS=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --network none)
export CONTAINER_ENGINE=podman CONTAINER_RUN_FLAGS="--runtime runc --network none" RUN_LOCAL_USER=$USER_ID
START=$SECONDS

say() { echo "== image-test [$((SECONDS - START)) s] $*"; }
die() { echo "image-test FAILED: $*" >&2; exit 1; }
trap 'echo "image-test FAILED at scripts/image_test.sh:$LINENO: $BASH_COMMAND" >&2' ERR
# On failure show the end of a step's log, not only its exit code.
logged() { local log=$1; shift; "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; die "$* (full log: $log)"; }; }

[[ $(id -u) == 0 ]] || die "needs root (buildah/podman storage, mmdebstrap)"
[[ -x $PY ]] || die "$PY is missing: run 'make install' (make image-test does)"
mkdir -p "$CACHE" "$WORK"

# --- tools ---------------------------------------------------------------------------------
missing=()
for tool in buildah podman runc mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if ((${#missing[@]})); then
  say "installing ${missing[*]} from Debian"
  logged "$WORK/apt.log" apt-get update
  DEBIAN_FRONTEND=noninteractive logged "$WORK/apt.log" apt-get install -y buildah podman runc mmdebstrap
fi

# --- 1. the stand-in base --------------------------------------------------------------------
torch_version=$(sed -n 's/^torch==//p' requirements/torch.txt)
wheel=$(ls "$CACHE"/wheels/torch-"$torch_version"*.whl 2>/dev/null | head -n 1 || true)
if [[ -z $wheel ]]; then
  say "fetching the torch $torch_version wheel for the stand-in base (pip's index settings)"
  logged "$WORK/torch-wheel.log" "$PY" -m pip download --no-deps --only-binary=:all: -d "$CACHE/wheels" "torch==$torch_version"
  wheel=$(ls "$CACHE"/wheels/torch-"$torch_version"*.whl | head -n 1)
fi
mirror=${IMAGE_TEST_MIRROR:-http://deb.debian.org/debian}
# The mirror here is a dated snapshot: without Check-Valid-Until apt refuses its Release file.
debootstrap_args=(--variant=minbase --include=python3,python3-venv,ca-certificates
  --aptopt='Acquire::Check-Valid-Until "false"' bookworm)
standin_file=$(cat <<EOF
FROM localhost/lora-fanout-standin-root:KEY
# The machine's CA bundle: the package index is reached through this machine's TLS setup.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY $(basename "$wheel") /tmp/
RUN printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf \\
 && python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir /tmp/$(basename "$wheel") \\
 && rm /tmp/$(basename "$wheel")
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
)
key=$(printf '%s\n' "${debootstrap_args[*]}" "$mirror" "$standin_file" | sha256sum | cut -c1-12)
BASE=localhost/lora-fanout-standin:$key
if podman image exists "$BASE"; then
  say "stand-in base $BASE: cached"
else
  rootfs=$CACHE/debian-$key.tar
  if [[ ! -s $rootfs ]]; then
    say "stand-in base: mmdebstrap a minimal Debian ($rootfs)"
    logged "$WORK/mmdebstrap.log" mmdebstrap "${debootstrap_args[@]}" "$rootfs.part.tar" "deb $mirror bookworm main"
    mv "$rootfs.part.tar" "$rootfs"
  fi
  logged "$WORK/standin.log" podman import "$rootfs" "localhost/lora-fanout-standin-root:$key"
  ctx=$WORK/standin-context
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  ln "$wheel" "$ctx/" 2>/dev/null || cp "$wheel" "$ctx/"
  printf '%s\n' "${standin_file//KEY/$key}" > "$ctx/Containerfile"
  say "stand-in base: venv with $(basename "$wheel")"
  logged "$WORK/standin.log" buildah bud "${BUILD_FLAGS[@]}" -t "$BASE" -f "$ctx/Containerfile" "$ctx"
  rm -rf "$ctx"
fi

# --- 2. the Dockerfile -----------------------------------------------------------------------
say "building the Dockerfile on $BASE (log: $WORK/build.log)"
previous=$(podman image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
logged "$WORK/build.log" buildah bud "${BUILD_FLAGS[@]}" --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" -f Dockerfile .
# The last run's image (untagged now) would otherwise pile up, 2 GB a run.
if [[ -n $previous && $previous != $(podman image inspect "$IMAGE" --format '{{.Id}}') ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
say "built $IMAGE ($(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}'))"

# --- 3. what the image holds -----------------------------------------------------------------
run_in_image() { podman run --rm "${RUN_FLAGS[@]}" --user "$USER_ID" "$IMAGE" "$@"; }
run_in_image python -m pip list --format=freeze > "$WORK/image-freeze.txt" || die "pip list in the image"
"$PY" scripts/image_test_job.py check-image-lock "$WORK/image-freeze.txt"
run_in_image sh -c '
  set -e
  for p in /src /opt/lora-fanout /wheels; do [ ! -e "$p" ] || { echo "$p is in the image"; exit 1; }; done
  for c in gcc cc g++; do ! command -v "$c" >/dev/null || { echo "$c is in the image"; exit 1; }; done
  found=$(find / -xdev \( -name "lora_fanout.egg-info" -o -path "*/src/setup.py" \) 2>/dev/null | head -n 1)
  [ -z "$found" ] || { echo "source or build leftovers: $found"; exit 1; }
  [ "$(command -v train)" ] || { echo "no train command"; exit 1; }
  [ "$(command -v serve)" ] || { echo "no serve command"; exit 1; }
  serve --help >/dev/null || { echo "serve --help failed"; exit 1; }
  echo "ok: no source copy, egg-info or compiler in the image; train is $(command -v train), serve $(command -v serve)"
' || die "image contents"

# --- 4. a 2-task job as a non-root user ------------------------------------------------------
job=$WORK/job
say "training a 2-task, 1-host job as uid $USER_ID ($job)"
logged "$WORK/make-job.log" "$PY" scripts/image_test_job.py make "$job" --tasks 2 --steps 4
chown -R "$USER_ID" "$job"
rc=0
timeout 600 scripts/run_local.sh "$job" "$IMAGE" > "$WORK/train.log" 2>&1 || rc=$?
[[ $rc == 0 ]] || { tail -n 40 "$WORK/train.log" >&2; die "train exited $rc (log: $WORK/train.log)"; }
"$PY" scripts/image_test_job.py check-done "$job"

# --- 5. SIGTERM to a long task ---------------------------------------------------------------
stop=$WORK/job-stop
say "SIGTERM while a task trains ($stop)"
logged "$WORK/make-job.log" "$PY" scripts/image_test_job.py make "$stop" --tasks 1 --steps 100000
chown -R "$USER_ID" "$stop"
scripts/run_local.sh "$stop" "$IMAGE" > "$WORK/stop.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  grep -q " step=[0-9]" "$WORK/stop.log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
grep -q " step=[0-9]" "$WORK/stop.log" || { kill -KILL "$pid" 2>/dev/null; tail -n 40 "$WORK/stop.log" >&2; die "no training step logged within 300 s"; }
t0=$SECONDS
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc == 143 ]] || { tail -n 40 "$WORK/stop.log" >&2; die "exit code $rc after SIGTERM, expected 143 (log: $WORK/stop.log)"; }
"$PY" scripts/image_test_job.py check-stopped "$stop"
say "passed: SIGTERM to exit 143 in $((SECONDS - t0)) s; image-test took $((SECONDS - START)) s"
