"""Which readers each export format was verified with, recorded in every manifest entry.

These are the stacks the project's tests load the artifacts with and compare images or
outputs (tests/train/test_export*.py; the old stacks and the Triton server run in cached envs
built by scripts/reader_envs.py). docs/exports.md has the same table with the supported
version ranges. Each format's model family support: SD 1.x/2.x (UNet + CLIP) for every format
here; the kohya key map is SD 1.x naming.
"""

from __future__ import annotations

CURRENT = "diffusers 0.42.1 + transformers 5.23.0 + peft 0.21.2"
OLD_032 = "diffusers 0.32.2 + transformers 4.54.1 + peft 0.17.1"
OLD_035 = "diffusers 0.35.2 + transformers 4.54.1 + peft 0.17.1"

VERIFIED_READERS: dict[str, tuple[str, ...]] = {
    "lora": (CURRENT, OLD_035, OLD_032),
    "kohya": (CURRENT, OLD_035, OLD_032, "ComfyUI / kohya-ss key maps (100% of keys)"),
    "merged-fp16": (CURRENT, OLD_035, OLD_032),
    "merged-int8": (CURRENT + " + torchao 0.18.0 (the torchao that wrote the pickle)",),
    "merged-nf4": (CURRENT + " + bitsandbytes 0.50 (CUDA only; checked by scripts/gpu_check_exports.py)",),
    "merged-bnb8": (CURRENT + " + bitsandbytes 0.50 (CUDA only; checked by scripts/gpu_check_exports.py)",),
    "mme": ("the packed format's readers, through code/inference.py (model_fn / predict_fn)",),
    "onnx": ("onnxruntime 1.32.0 CPUExecutionProvider, opset 18",
             "optimum-onnx 0.1.0 ORTStableDiffusionPipeline (optimum 2.1.0, transformers 4.57.6, diffusers 0.35.2, "
             "onnxruntime 1.32.0)"),
    "triton": ("tritonserver 2.51 (nvidia-pytriton 0.7.0) Python backend, CPU, serving env " + CURRENT
               + " + numpy 1.26",),
}
