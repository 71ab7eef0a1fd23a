"""Packaging for the three packages.

Bare ``pip install .`` stays light (boto3 only) because launcher Lambdas install it; the
training stack comes with the ``train`` extra, test tools with ``dev``. Torch is not listed in
``train`` on purpose: the CUDA base image provides it, and the dev setup installs the pinned
CPU wheel first (see the Makefile).

These are compatible ranges for people who install the package into their own stack. The
project's own commands (``make install``, the Dockerfile, Lambda zips) install the exact
versions in ``requirements/*.lock``, which ``make lock`` resolves from the lists below and
``tests/test_locks.py`` holds to them.
"""

from setuptools import find_packages, setup

TRAIN = [
    "diffusers>=0.42,<0.43",
    # 5.24 refuses peft < 0.22 at run time (load_lora_weights with a text encoder), and no
    # peft 0.22 exists yet: the metadata does not say so, so the range must.
    "transformers>=5.23,<5.24",
    "peft>=0.21,<0.22",
    "accelerate>=1.15,<2",
    "bitsandbytes>=0.50,<0.51",
    "prodigyopt>=1.1,<2",
    "safetensors>=0.4",
    "torchao>=0.14",
    # AVIF decodes from Pillow 11.3 on (its wheels ship libavif); HEIC/HEIF through pillow-heif
    "Pillow>=11.3",
    "pillow-heif>=1.0,<2",
    # face-aware crops and screening: OpenCV 4.x wheels ship the Haar cascades (5.x dropped them)
    "opencv-python-headless>=4.9,<5",
    "tqdm>=4.66",
    # the `onnx` export format: torch's dynamo exporter needs onnxscript; onnxruntime checks it
    "onnx>=1.18,<2",
    "onnxscript>=0.5,<0.8",
    "onnxruntime>=1.20,<2",
]
# all a launcher Lambda installs: boto3, and Powertools' Metrics for the CloudWatch embedded
# metric format lines (pure Python, ~45 ms to import)
BASE = ["boto3>=1.34", "aws-lambda-powertools>=3,<4"]
CONTAINER = ["sagemaker-training>=5.1.4,<6"]
# job and task pages (report/): templates and static SVG charts; no torch
REPORT = ["Jinja2>=3.1,<4", "matplotlib>=3.8,<4"]
# the inference container (serve/): SageMaker's /ping and /invocations over an ASGI server
SERVE = ["fastapi>=0.115,<1", "uvicorn>=0.30,<1"]
DEV = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "moto[server]>=5.2,<6",
    "matplotlib>=3.8,<4",          # `fanout simulate --plots` only; fanout never imports it otherwise
    "playwright>=1.50,<2",         # the report pages checked in Debian's chromium (no browser download)
    "scikit-image>=0.25,<1",       # real photographs for the photo tests (skimage/data), test data only
    "requests>=2.31",              # a real HTTP client against the serving container
    "pytest-xdist>=3.6",
]

setup(
    name="lora-fanout",
    version="0.1.0",
    description="SageMaker DreamBooth/LoRA training container and K-instance job fan-out toolkit",
    python_requires=">=3.10",
    packages=find_packages(include=["train", "train.*", "container", "container.*", "fanout", "fanout.*",
                                    "report", "report.*", "serve", "serve.*"]),
    # the report pages' templates, stylesheet and script (report/templates/) travel with the package
    package_data={"report": ["templates/*"]},
    install_requires=BASE,
    extras_require={"train": TRAIN, "container": CONTAINER, "report": REPORT, "serve": SERVE, "dev": DEV},
    entry_points={
        "console_scripts": [
            "train=container.entry:main",
            "fanout=fanout.cli:main",
            "serve=serve.cli:main",
        ]
    },
)
