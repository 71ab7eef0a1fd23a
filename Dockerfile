# The SageMaker training image: `docker run IMAGE train` trains this host's share of a task list.
# The same image is the inference container: SageMaker hosting runs `docker run IMAGE serve`
# (serve/: /ping and /invocations on 8080, one base per GPU, users' LoRAs hot-swapped in;
# docs/serving.md says why one image and not two).
#
#   docker build -t lora-fanout .
#   docker build --build-arg BASE_IMAGE=<a torch image with requirements/torch.txt's torch> -t lora-fanout .
#
# Torch comes from the base image (a CUDA PyTorch runtime); everything else is installed at the
# exact versions in requirements/image.lock, the ones the test suite ran with. No model weights
# are baked in: the base model arrives as the `model` channel.
#
# The default base carries torch 2.13.0, the torch of requirements/torch.txt that the dev venv
# and `make image-test` run too, so the image ships the set the tests passed with (torchao 0.18's
# compiled kernels need torch >= 2.11; 2.13.0's PyPI build is the CUDA 13.0 one). A base with
# another torch is refused below rather than paired with a torchao built for a different one.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

# --- stage 1: every locked package as a wheel. Only this stage ever sees a compiler, Python
# headers or the source tree; none of it reaches the image.
FROM ${BASE_IMAGE} AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements ./requirements
COPY setup.py ./
COPY fanout ./fanout
COPY train ./train
COPY container ./container
COPY report ./report
COPY serve ./serve
# sagemaker-training is an sdist with a small C extension (gethostname): it needs a C compiler
# and Python.h. Only what the base lacks is installed; g++ is not needed. The pip cache is a
# build cache, never in a layer: a rebuild reuses the wheels built from sdists (and downloads,
# where the index allows HTTP caching).
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    want=$(sed -n 's/^torch==//p' requirements/torch.txt); \
    have=$(python -c "import torch; print(torch.__version__.split('+')[0])" || echo none); \
    if [ "$have" != "$want" ]; then \
        echo "BASE_IMAGE has torch $have, but requirements/image.lock is resolved for torch $want" \
             "(requirements/torch.txt; torchao is held to it): use a base with torch $want, or" \
             "change requirements/torch.txt, run 'make lock' and 'make test'." >&2; \
        exit 1; \
    fi; \
    pyver=$(python -c "import sys; print('%d.%d' % sys.version_info[:2])"); \
    lockpy=$(sed -n 's/.*pip-compile with Python \([0-9.]*\).*/\1/p' requirements/image.lock); \
    if [ "$pyver" != "$lockpy" ]; then \
        echo "BASE_IMAGE has Python $pyver, but requirements/image.lock is resolved for Python $lockpy:" \
             "run 'make lock' with that Python (make lock PY=python$pyver)." >&2; \
        exit 1; \
    fi; \
    include=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])"); \
    need=""; \
    command -v gcc >/dev/null 2>&1 || need="gcc libc6-dev"; \
    [ -f "$include/Python.h" ] || need="$need libpython$pyver-dev"; \
    if [ -n "$need" ]; then apt-get update; apt-get install -y --no-install-recommends $need; fi; \
    [ -f "$include/Python.h" ] || { echo "no Python.h in $include for $(command -v python)" >&2; exit 1; }; \
    python -m pip wheel --no-deps --wheel-dir /wheels -r requirements/image.lock .

# --- stage 2: the image. The wheels are mounted for one step, never copied into a layer.
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

# --no-index --no-deps: exactly the locked wheels and nothing else; torch is not among them, so
# the base's CUDA build is never replaced. `pip check` then proves the lock fits the base's torch.
# The import check runs in / (no source there): it passes only if the package was installed.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    set -eux; \
    python -m pip install --no-index --no-deps /tmp/wheels/*.whl; \
    python -m pip check; \
    cd /; \
    python -c "import train, torch, torchao, diffusers, peft, bitsandbytes, sagemaker_training, fanout, container.entry, serve.app; assert 'site-packages' in container.entry.__file__, container.entry.__file__"; \
    python -c "import report.render; report.render.environment().get_template('task.html')"; \
    command -v train; \
    command -v serve

# SageMaker mounts its tree here; the container never writes outside it.
RUN mkdir -p /opt/ml/input/data /opt/ml/input/config /opt/ml/model /opt/ml/checkpoints /opt/ml/output/data
WORKDIR /opt/ml

# SageMaker's inference contract: `serve` listens here (GET /ping, POST /invocations).
EXPOSE 8080

# Exec form, no shell and no ENTRYPOINT wrapper: `docker run IMAGE train` makes `train` PID 1,
# so SageMaker's SIGTERM (stop, spot notice) reaches the Python handler that saves state; and
# `docker run IMAGE serve` (SageMaker hosting) makes `serve` PID 1 the same way.
CMD ["train"]
