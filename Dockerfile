# The SageMaker training image: `docker run IMAGE train` trains this host's share of a task list.
#
#   docker build -t lora-fanout .
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime -t lora-fanout .
#
# Torch comes from the base image (a CUDA PyTorch runtime); no model weights are baked in: the
# base model arrives as the `model` channel.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/lora-fanout
COPY setup.py ./
COPY fanout ./fanout
COPY train ./train
COPY container ./container

# sagemaker-training builds a small C extension (gethostname) from source, so a compiler is
# present for exactly this layer and removed in the same layer: it never reaches the image.
# Torch is already in the base image and pinned to it: a dependency that wants another torch
# fails the build instead of silently pulling a multi-GB wheel over the CUDA build.
# Only the build packages the base image lacks are added, and only those are purged again.
RUN set -eux; \
    build_deps=""; \
    for p in gcc g++ libc6-dev; do dpkg -s "$p" >/dev/null 2>&1 || build_deps="$build_deps $p"; done; \
    if [ -n "$build_deps" ]; then apt-get update; apt-get install -y --no-install-recommends $build_deps; fi; \
    python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-pin.txt; \
    python -m pip install --no-cache-dir -c /tmp/torch-pin.txt ".[train,container]"; \
    rm /tmp/torch-pin.txt; \
    if [ -n "$build_deps" ]; then apt-get purge -y --auto-remove $build_deps; fi; \
    rm -rf /var/lib/apt/lists/*; \
    python -c "import torch, diffusers, peft, sagemaker_training, container.entry"; \
    command -v train

# SageMaker mounts its tree here; the container never writes outside it.
RUN mkdir -p /opt/ml/input/data /opt/ml/input/config /opt/ml/model /opt/ml/checkpoints /opt/ml/output/data
WORKDIR /opt/ml

# Exec form, no shell and no ENTRYPOINT wrapper: `docker run IMAGE train` makes `train` PID 1,
# so SageMaker's SIGTERM (stop, spot notice) reaches the Python handler that saves state.
CMD ["train"]
