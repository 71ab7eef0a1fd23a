#!/usr/bin/env python3
"""Time the `onnx` export and print its onnxruntime check, on the tiny or the SD 1.5-shaped model.

    python scripts/bench_onnx.py [--arch tiny|sd15] [--out DIR]

Builds the base (random weights, scripts/make_tiny_model.py), attaches a UNet + text-encoder
LoRA, runs `export_model(formats="onnx")` on the CPU and prints the export seconds, each
graph's size (unet/model.onnx, ...; and its external-data file: the SD 1.5 UNet is over protobuf's 2 GB), and the
onnxruntime-vs-torch differences from the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    a = p.parse_args(argv)

    import make_tiny_model  # a sibling: scripts/ is sys.path[0]
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from train.export import ExportConfig, export_model

    work = a.out or Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    base = make_tiny_model.build_pipeline(work / f"base-{a.arch}", arch=a.arch)
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
    t0 = time.perf_counter()
    manifest = export_model(pipe, ExportConfig(formats="onnx", drift_check=False), work / "model",
                            base_model_dir=base, train_text_encoder=True, rank=4, lora_alpha=8)
    entry = manifest["formats"]["onnx"]
    print(f"onnx export ({a.arch}): {entry['status']}, write {entry['seconds']} s, total "
          f"{time.perf_counter() - t0:.1f} s (check {entry.get('onnxruntime_check', {}).get('seconds')} s)")
    folder = work / "model" / "onnx"
    for path in sorted(folder.glob("*/model.onnx*")):
        print(f"  {path.relative_to(folder).as_posix():<28} {path.stat().st_size / 1e6:>10.1f} MB")
    print(json.dumps(entry.get("onnxruntime_check"), indent=1))
    return 0 if entry["status"] == "ok" and not entry.get("flagged") else 1


if __name__ == "__main__":
    sys.exit(main())
