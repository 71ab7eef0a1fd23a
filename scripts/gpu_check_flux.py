#!/usr/bin/env python3
"""On a GPU: does the quantized FLUX base this trainer builds compute what diffusers' own
bitsandbytes loading computes, and does a QLoRA task train and reload on it?

    python scripts/gpu_check_flux.py [--family flux|flux2-klein] [--quantization nf4|int8] [--json OUT]

Builds the tiny pipeline (scripts/tiny_flux.py), then (1) loads the transformer twice, with
``train.pipeline.load_base(base_quantization=...)`` (the loaded modules quantized layer by
layer, the path the CPU tests run) and with diffusers' ``BitsAndBytesConfig`` (quantized while
loading, GPU only), and compares their outputs on the same input; (2) trains a short task on
the quantized base with ``run_task`` and reloads the LoRA with ``load_lora_weights``; prints the
figures and peak VRAM. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def diffusers_quantized(model: Path, family: str, kind: str):
    import torch
    from diffusers import BitsAndBytesConfig, Flux2Transformer2DModel, FluxTransformer2DModel

    cls = FluxTransformer2DModel if family == "flux" else Flux2Transformer2DModel
    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16) if kind == "nf4"
              else BitsAndBytesConfig(load_in_8bit=True))
    return cls.from_pretrained(model, subfolder="transformer", quantization_config=config, torch_dtype=torch.bfloat16)


def transformer_inputs(transformer, family: str, device):
    import torch

    g = torch.Generator().manual_seed(0)
    c = transformer.config
    tokens = 64
    x = torch.randn(1, tokens, c.in_channels, generator=g)
    text = torch.randn(1, 16, c.joint_attention_dim, generator=g)
    kw = dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([0.5]), return_dict=False)
    if family == "flux":
        kw.update(pooled_projections=torch.randn(1, c.pooled_projection_dim, generator=g),
                  txt_ids=torch.zeros(16, 3), img_ids=torch.zeros(tokens, 3),
                  guidance=torch.tensor([3.5]) if c.guidance_embeds else None)
    else:
        kw.update(txt_ids=torch.zeros(1, 16, 4), img_ids=torch.zeros(1, tokens, 4), guidance=None)
    return {k: (v.to(device, torch.bfloat16) if hasattr(v, "to") and v.is_floating_point() else v)
            for k, v in kw.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("flux", "flux2-klein"), default="flux")
    p.add_argument("--quantization", choices=("nf4", "int8"), default="nf4")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check_flux: no CUDA GPU here; skipped (diffusers' BitsAndBytesConfig needs one)")
        return 0
    import make_demo_data
    import tiny_flux
    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.task import run_task

    work = Path(tempfile.mkdtemp(prefix="gpu-check-flux-"))
    model = tiny_flux.build(work / "model", family=a.family)
    base = load_base(model, mixed_precision="bf16", base_quantization=a.quantization)
    ours = base.transformer
    theirs = diffusers_quantized(model, a.family, a.quantization)
    with torch.no_grad():
        mine = ours(**transformer_inputs(ours, a.family, "cuda"))[0].float()
        ref = theirs(**transformer_inputs(theirs, a.family, "cuda"))[0].float()
    rel = float((mine - ref).norm() / ref.norm())
    del theirs
    make_demo_data.make_demo_data(work / "data", count=4, size=64)
    torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(instance_data=str(work / "data" / "instance"), instance_prompt="a photo of sks toy",
                      resolution=64, max_train_steps=10, learning_rate=5e-3, mixed_precision="bf16",
                      base_quantization=a.quantization, preview_every=0, checkpoint_every=0,
                      preview_inference_steps=2, num_preview_images=1, export="lora,kohya" if a.family != "flux"
                      else "lora", export_check=True)
    result = run_task(base, cfg, model_dir=work / "out" / "model", checkpoint_dir=work / "out" / "ck")
    manifest = json.loads((work / "out" / "model" / "manifest.json").read_text())
    report = {"family": a.family, "quantization": a.quantization, "gpu": torch.cuda.get_device_name(),
              "ours_vs_diffusers_bnb_relative_diff": round(rel, 5), "task": result.state,
              "peak_cuda_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
              "formats": {n: {k: e.get(k) for k in ("status", "drift")} for n, e in manifest["formats"].items()}}
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return 0 if result.state == "completed" and rel < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
