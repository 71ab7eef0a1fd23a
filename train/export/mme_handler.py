"""SageMaker inference handler packed into every MME archive as `code/inference.py`.

The HuggingFace inference toolkit (and any server that follows its `model_fn` / `predict_fn`
convention) calls these with the folder the archive was unpacked into. Self-contained on
purpose: the serving image has torch + diffusers (+ peft for LoRA archives), not this project.

Request:  {"inputs": "a photo of sks dog", "parameters": {"num_inference_steps": 25, "seed": 0, ...}}
Response: {"images": ["<base64 PNG>", ...]}
A LoRA archive needs its base model: `BASE_MODEL_DIR` (env) or the path in serving.json.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path


def model_fn(model_dir, context=None):
    import torch
    from diffusers import StableDiffusionPipeline

    model_dir = Path(model_dir)
    serving = json.loads((model_dir / "serving.json").read_text())
    cuda = torch.cuda.is_available()
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if serving["format"] == "lora":
        base = os.environ.get("BASE_MODEL_DIR") or serving["base_model"]["path"]
        pipe = StableDiffusionPipeline.from_pretrained(base, dtype=torch.float16 if cuda else torch.float32, **kwargs)
        pipe.load_lora_weights(model_dir)
        return pipe.to("cuda" if cuda else "cpu")
    # diffusers runs torchao integer quantization in bf16; bitsandbytes places its own weights.
    dtype = torch.bfloat16 if serving["format"] == "merged-int8" else (torch.float16 if cuda else torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=dtype, **kwargs)
    if serving["format"] in ("merged-nf4", "merged-bnb8"):
        pipe.text_encoder.to("cuda")
        pipe.vae.to("cuda")
        return pipe
    return pipe.to("cuda" if cuda else "cpu")


def predict_fn(data, pipe, context=None):
    import torch

    params = dict(data.get("parameters") or {})
    generator = torch.Generator("cpu").manual_seed(int(params.pop("seed", 0)))
    images = pipe(data["inputs"], generator=generator, **params).images
    encoded = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        encoded.append(base64.b64encode(buf.getvalue()).decode())
    return {"images": encoded}
