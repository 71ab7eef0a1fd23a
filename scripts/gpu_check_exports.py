#!/usr/bin/env python3
"""Run every export format on a GPU, bitsandbytes nf4 / 8-bit included, and report sizes, load
times and drift.

    python scripts/gpu_check_exports.py [--arch tiny|sd15] [--out DIR] [--json results.json]

Builds a pipeline with random weights (scripts/make_tiny_model.py; `--arch sd15` gives the real
SD 1.5 shapes, so sizes and load times are the real model's), attaches a LoRA with non-zero
weights, runs `train.export.export_model` with all formats on the GPU, and prints one row per
format from the manifest. Then (`--triton`, default on) it serves `triton` archives (lora,
merged-fp16, merged-nf4) from a real tritonserver over this interpreter's packages (CUDA torch,
fp16) and prints load seconds, host and GPU memory per loaded user model, and whether each
image equals the in-process pipeline's. Without a GPU it says so and exits 0: nf4/bnb8 cannot
run on CPU (diffusers refuses bitsandbytes loading with "No GPU found").
Random weights make drift numbers pessimistic: an untrained net amplifies rounding; a trained
LoRA on a real base drifts less.
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

from train.export.formats import formats_for  # noqa: E402 (light: the table of formats, no torch)

ALL_FORMATS = ",".join(formats_for("sd"))  # this check builds an SD pipeline


def build_base(out: Path, arch: str) -> Path:
    import make_tiny_model   # a sibling: scripts/ is sys.path[0] when this script runs

    return make_tiny_model.build_pipeline(out, arch=arch)


def lora_pipeline(base: Path, rank: int, alpha: float, b_std: float, device: str):
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    dtype = torch.float32 if device == "cpu" else torch.float16
    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, b_std)
    return pipe


def triton_check(work: Path, arch: str, device: str, sources: str) -> dict:
    """Each archive on tritonserver: load seconds, host and GPU memory per loaded model, and
    whether its image equals the in-process pipeline's (same loader, same seed)."""
    import reader_envs
    from bench_triton import export_archives, measure

    # The server runs over this interpreter's packages (CUDA torch here) with numpy<2 in front.
    env = reader_envs.ensure_env("triton-host")
    names = [s for s in (sources or ("lora,merged-fp16,merged-nf4" if device == "cuda" else "lora,merged-fp16"))
             .split(",") if s]
    _, archives, entries = export_archives(work / "triton", arch, names, env, device=device)
    served = measure(archives, env, work / "triton", size=256 if arch == "sd15" else 64, steps=4, keep_images=True)
    for name, result in served.items():
        same = _in_process_matches(archives[name], result.pop("png"), size=256 if arch == "sd15" else 64, steps=4)
        result.update(same_as_in_process=same, footprint=entries[name].get("footprint"))
        print(f"triton {name}: load {result['load_seconds']} s, RSS {result['rss_bytes'] / 1e6:.0f} MB, "
              f"GPU {result.get('gpu_bytes_by_model', {}).get(name, 0) / 1e6:.0f} MB, "
              f"infer {result['infer_seconds']} s, same image as in-process: {same}")
    return served


def _in_process_matches(archive: Path, png: bytes, *, size: int, steps: int) -> dict:
    import io
    import sys as _sys
    import tempfile as _tempfile

    import numpy as np
    import torch
    from PIL import Image

    from train.export.triton import VERSION, unpack

    with _tempfile.TemporaryDirectory() as tmp:
        entry = unpack(archive, Path(tmp))
        _sys.path.insert(0, str(entry / VERSION))
        import inference  # the archive's own loader, run here

        _sys.path.pop(0)
        pipe = inference.model_fn(entry / VERSION)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a photo of sks dog", num_inference_steps=steps, height=size, width=size,
                     generator=torch.Generator("cpu").manual_seed(0)).images[0]
        _sys.modules.pop("inference", None)
    a = np.asarray(image).astype(np.int16)
    b = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return {"equal": bool(np.array_equal(a, b)), "mean_abs_diff": round(float(np.abs(a - b).mean()), 4)}


def report(manifest: dict) -> str:
    rows = [f"{'format':<12} {'status':<8} {'MB':>9} {'unet MB':>9} {'write s':>8} {'load s':>7} {'render s':>8} "
            f"{'mean|d|':>8} {'PSNR dB':>8}"]
    for name, e in manifest["formats"].items():
        d = e.get("drift") or {}
        unet = (e.get("component_bytes") or {}).get("unet")
        rows.append(f"{name:<12} {e['status']:<8} {e.get('bytes', 0) / 1e6:>9.1f} "
                    f"{(unet or 0) / 1e6:>9.1f} {e.get('seconds', 0):>8.2f} {e.get('load_seconds', 0):>7.2f} "
                    f"{e.get('render_seconds', 0):>8.2f} "
                    f"{d.get('mean_abs_diff', float('nan')):>8.3f} {str(d.get('psnr_db', '-')):>8}"
                    + (f"  {e['reason']}" if e.get("reason") else "") + ("  FLAGGED" if e.get("flagged") else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "sd15"), default="sd15", help="base model shape (default: sd15)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the manifest and GPU info here")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha")
    p.add_argument("--b-std", type=float, default=0.02, help="std of the random lora_B weights (0 = no effect)")
    p.add_argument("--drift-resolution", type=int, default=0, help="side of the drift renders (0: native, at most 256)")
    p.add_argument("--drift-steps", type=int, default=4, help="steps of the drift renders")
    p.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True,
                   help="also serve triton archives from a real tritonserver (CUDA fp16 on a GPU) and compare "
                        "each image with the in-process pipeline's")
    p.add_argument("--triton-sources", default="",
                   help="archive sources for that check (default: lora,merged-fp16,merged-nf4 on CUDA, "
                        "lora,merged-fp16 on CPU)")
    p.add_argument("--cpu", action="store_true",
                   help="run anyway on CPU (fp32 base; nf4/bnb8 are then recorded as skipped)")
    a = p.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.cpu:
        print("no CUDA GPU here: merged-nf4 and merged-bnb8 need one (bitsandbytes through diffusers). "
              "Nothing measured; the CPU formats are covered by tests/train/test_export_formats.py.")
        return 0
    from train.export import ExportConfig, ExportError, export_model

    work = a.out or Path(tempfile.mkdtemp(prefix="gpu-export-"))
    t0 = time.perf_counter()
    base = build_base(work / f"base-{a.arch}", a.arch)
    print(f"built {a.arch} base in {time.perf_counter() - t0:.1f} s: {base}")
    pipe = lora_pipeline(base, a.rank, a.alpha, a.b_std, device)
    mme_source = "merged-nf4" if device == "cuda" else "merged-int8"
    cfg = ExportConfig(formats=ALL_FORMATS, mme_source=mme_source, drift_resolution=a.drift_resolution,
                       drift_steps=a.drift_steps)
    failed = None
    try:
        export_model(pipe, cfg, work / "model", base_model_dir=base, train_text_encoder=False,
                     rank=a.rank, lora_alpha=a.alpha, validation_prompts=["a photo of sks dog"],
                     extra_manifest={"script": "gpu_check_exports", "arch": a.arch})
    except ExportError as e:  # the manifest is still written; show what did work
        failed = str(e)
    manifest = json.loads((work / "model" / "manifest.json").read_text())
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "arch": a.arch, "total_seconds": round(time.perf_counter() - t0, 1)}
    if device == "cuda":
        info["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(info))
    print(report(manifest))
    triton = triton_check(work, a.arch, device, a.triton_sources) if a.triton else None
    if a.json:
        a.json.write_text(json.dumps({"info": info, "manifest": manifest, "triton": triton}, indent=2, default=str))
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
