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
    "Pillow>=10",
    "tqdm>=4.66",
    # the `onnx` export format: torch's dynamo exporter needs onnxscript; onnxruntime checks it
    "onnx>=1.18,<2",
    "onnxscript>=0.5,<0.8",
    "onnxruntime>=1.20,<2",
]
BASE = ["boto3>=1.34"]  # all a launcher Lambda installs
CONTAINER = ["sagemaker-training>=5.1.4,<6"]
DEV = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "moto[server]>=5.2,<6",
    "matplotlib>=3.8,<4",          # `fanout simulate --plots` only; fanout never imports it otherwise
]

setup(
    name="lora-fanout",
    version="0.1.0",
    description="SageMaker DreamBooth/LoRA training container and K-instance job fan-out toolkit",
    python_requires=">=3.10",
    packages=find_packages(include=["train", "train.*", "container", "container.*", "fanout", "fanout.*"]),
    install_requires=BASE,
    extras_require={"train": TRAIN, "container": CONTAINER, "dev": DEV},
    entry_points={
        "console_scripts": [
            "train=container.entry:main",
            "fanout=fanout.cli:main",
        ]
    },
)
