#!/usr/bin/env python3
"""Training throughput and peak memory of one LoRA task configuration.

    python scripts/bench_train.py [--model DIR | --family sd|sdxl | --arch tiny|sd15|sdxl]
        [--resolution 512] [--rank 4] [--batch 1] [--steps 20] [--warmup 3] [--mixed-precision bf16]
        [--gradient-checkpointing] [--optimizer adamw8bit] [--train-text-encoder] [--threads N]
        [--reference PATH/train_dreambooth_lora_sdxl.py] [--json OUT.json]
    python scripts/bench_train.py --arch sd15 --matrix      # the README table, on a GPU
    python scripts/bench_train.py --arch sdxl --resolution 1024 --rank 16 --matrix   # SDXL, on a GPU
    python scripts/bench_train.py --family flux|flux2-klein [--base-quantization nf4] \
        --reference PATH/train_dreambooth_lora_flux[2_klein].py          # tiny, against the reference
    python scripts/bench_train.py --arch flux-dev --rank 16 --matrix        # 512/1024 px x none/nf4, GPU
    python scripts/bench_train.py --arch flux2-klein-4b --rank 16 --matrix  # 1024 px, GPU
    python scripts/bench_train.py --family z-image|qwen-image [--base-quantization nf4] \
        --reference PATH/train_dreambooth_lora_{z,qwen}_image.py          # tiny, against the reference
    python scripts/bench_train.py --arch z-image-6b --matrix                # 1024 px, bf16, GPU only
    python scripts/bench_train.py --arch qwen-image-20b --matrix            # 1024 px, NF4 base, GPU only

Runs the real training loop (``train.task.run_task``; previews and checkpoints off) and
reports steps/s over the steps after ``--warmup`` and peak memory: resident set size on CPU,
``torch.cuda.max_memory_allocated`` on a GPU. ``--arch sd15`` builds an SD1.5-shaped pipeline
with random weights (the real model's compute and memory, nothing downloaded). ``--matrix``
runs bf16 / rank 4 / batch 1 with and without gradient checkpointing and 8-bit AdamW, each in
its own process (accelerate fixes the mixed precision per process). ``--family sdxl`` builds the
tiny SDXL pipeline, ``--arch sdxl`` the SDXL-base-shaped one (random weights, ~14 GB in fp32).

``--reference PATH`` also runs a diffusers reference script (``train_dreambooth_lora_sdxl.py``
or ``train_dreambooth_lora.py``; fetch it yourself, it is not part of this repository) on the
same model folder, images and settings, in its own process (``scripts/bench_reference.py``
times its optimizer steps), and prints both, with the output change of each trained LoRA: the
mean absolute pixel difference (0-255) it makes to the base's image of the instance prompt
(same seed, the family's pipeline), which should be of a similar size for the two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# scripts/ is sys.path[0] when a script runs, so its sibling builders import directly.
import bench_reference
import make_demo_data
import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
MATRIX = [[], ["--gradient-checkpointing"], ["--optimizer", "adamw8bit"],
          ["--gradient-checkpointing", "--optimizer", "adamw8bit"]]
# The flow-matching GPU figures (issue 10): bf16, gradient checkpointing; pass --rank 16.
FLOW_MATRIX = {
    "flux-dev": [["--gradient-checkpointing", "--resolution", r, *q] for r in ("512", "1024")
                 for q in ([], ["--base-quantization", "nf4"])],
    "flux2-klein-4b": [["--gradient-checkpointing", "--resolution", "1024"]],
    # Issue 19's targets: Z-Image bf16 <= 24 GB, Qwen-Image with an NF4 base <= 24 GB (the
    # families' recipes: rank 16, 8-bit AdamW, gradient checkpointing, 1024 px).
    "z-image-6b": [["--gradient-checkpointing", "--resolution", "1024", "--rank", "16", "--optimizer", "adamw8bit"]],
    "qwen-image-20b": [["--gradient-checkpointing", "--resolution", "1024", "--rank", "16", "--optimizer", "adamw8bit",
                        "--base-quantization", "nf4"]],
}
GPU_ONLY_ARCHES = ("z-image-6b", "qwen-image-20b")  # fp32 on a CPU would need 24-82 GB of RAM for nothing


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a diffusers pipeline folder (default: build --arch into a temp dir)")
    p.add_argument("--family", choices=tuple(make_tiny_model.BUILDERS), default=None,
                   help="family of the tiny model to build (default sd; a full-shape --arch implies its family)")
    p.add_argument("--arch", choices=tuple(make_tiny_model.ARCHES), default="tiny",
                   help="pipeline to build when --model is not given: tiny, or sd15 / sdxl full-shape random weights")
    p.add_argument("--resolution", type=int, default=None, help="default: 512 for sd15, 1024 for sdxl, 64 for tiny")
    p.add_argument("--reference", type=Path, default=None,
                   help="diffusers' train_dreambooth_lora[_sdxl].py: run it on the same model and settings too")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--batch", type=int, default=1, help="train batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optimizer", choices=("adamw", "adamw8bit", "prodigy"), default="adamw")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--base-quantization", choices=("none", "nf4", "int8"), default="none",
                   help="FLUX.1 / Klein: train on an NF4 / int8 (bitsandbytes) quantized base (QLoRA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--matrix", action="store_true", help="run the 4 README variants (bf16) as subprocesses")
    p.add_argument("--json", type=Path, help="also write the result(s) here")
    return p.parse_args(argv)


def bench(a) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    resolution = a.resolution or {"sd15": 512, "sdxl": 1024, "flux-dev": 1024, "flux2-klein-4b": 1024,
                                  "z-image-6b": 1024, "qwen-image-20b": 1024}.get(a.arch, 64)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = a.model or build_model(work / "model", a)
    make_demo_data.make_demo_data(work / "data", count=4, size=resolution)
    family = family_name(model)

    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.task import run_task

    base = load_base(model, mixed_precision=a.mixed_precision, base_quantization=a.base_quantization)
    device = base.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(instance_data=str(work / "data" / "instance"), instance_prompt="a photo of sks toy",
                      resolution=resolution, rank=a.rank, train_batch_size=a.batch, mixed_precision=a.mixed_precision,
                      gradient_checkpointing=a.gradient_checkpointing, optimizer=a.optimizer,
                      train_text_encoder=a.train_text_encoder, max_train_steps=a.warmup + a.steps,
                      preview_every=0, checkpoint_every=0, preview_inference_steps=2, num_preview_images=1,
                      export="lora", export_check=False, log_every=max(1, a.warmup + a.steps),
                      base_quantization=a.base_quantization, learning_rate=1e-4, lr_scheduler="constant",
                      lr_warmup_steps=0, lora_alpha=float(a.rank))
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def record_step() -> bool:        # called once after every step: a free per-step clock
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())  # CPU time: robust to other processes on a shared machine
        return False

    if a.reference and a.base_quantization != "none" and not cuda and \
            "bnb_quantization_config_path" in Path(a.reference).read_text():
        a.reference = None  # diffusers' BitsAndBytesConfig refuses to load without a GPU
        print("reference: not run (its quantized load, diffusers' BitsAndBytesConfig, needs a GPU)")
    try:
        run_task(base, cfg, model_dir=work / "out" / "model", checkpoint_dir=work / "out" / "ck",
                 stop_requested=record_step, task_id="bench")
        peak_rss_mib = bench_reference.peak_rss_mib()  # before the reference: it is not ours
        parked_mib = parked_text_encoders_mib(base)
        del base  # the reference runs in another process: free this one's copy first
        reference = run_reference(a, model, work, resolution) if a.reference else None
        if reference is not None and a.base_quantization != "none":
            quantized = "bnb_quantization_config_path" in Path(a.reference).read_text()
            reference["base_quantization"] = a.base_quantization if quantized else "none (the script has no option)"
        if reference is not None:  # how far each trained LoRA moves the base's image
            ours_change = output_change(model, work / "out" / "model", resolution)
            reference["output_change"] = output_change(model, work / "reference-out", resolution)
    finally:
        shutil.rmtree(work, ignore_errors=True)   # an sd15 build is ~4 GB, sdxl ~14 GB
    steps_per_s = rate(stamps, a.warmup)
    result = {
        "arch": a.arch if not a.model or a.arch != "tiny" else str(a.model), "family": family, "device": str(device),
        "resolution": resolution, "rank": a.rank, "batch": a.batch, "mixed_precision": a.mixed_precision,
        "gradient_checkpointing": a.gradient_checkpointing, "optimizer": a.optimizer,
        "train_text_encoder": a.train_text_encoder, "threads": torch.get_num_threads(), "timed_steps": a.steps,
        "steps_per_s": round(steps_per_s, 3), "cpu_s_per_step": cpu_per_step(cpu_stamps, a.warmup),
        "peak_rss_mib": peak_rss_mib, "base_quantization": a.base_quantization,
    }
    if parked_mib:  # FLUX.1's T5 / Klein's Qwen3 wait in CPU memory during the steps
        result["text_encoders_parked_off_gpu_mib"] = parked_mib
    if cuda:
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    if reference is not None:
        result["output_change"] = ours_change
        result["reference"] = reference
    return result


def output_change(model: Path, lora_dir: Path, resolution: int, seed: int = 0) -> float:
    """Mean absolute pixel difference (0-255) between the base's image of the instance prompt and
    the same image with the LoRA of ``lora_dir`` loaded (same seed, 4 steps of the family's sampler)."""
    import numpy as np
    import torch

    from train.families import family_of

    family = family_of(model)

    def render(pipe):
        with torch.no_grad():
            image = pipe(prompt="a photo of sks toy", num_inference_steps=4, height=resolution, width=resolution,
                         generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
        return np.round(image * 255).astype(np.float64)

    pipe = family.load_pipeline(model, dtype=torch.float32)
    before = render(pipe)
    pipe.load_lora_weights(lora_dir)
    return round(float(np.abs(render(pipe) - before).mean()), 4)


def build_model(out: Path, a) -> Path:
    """The random-weight pipeline, built in a child process: a full-shape build's init memory
    must not count as (or add to) the training process's peak."""
    cmd = [sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(out), "--arch", a.arch]
    subprocess.run(cmd + (["--family", a.family] if a.family else []), check=True, stdout=subprocess.DEVNULL)
    return out


def rate(stamps: list[float], warmup: int) -> float:
    """Steps per second over the steps after the first ``warmup`` ones."""
    timed = stamps[warmup - 1:] if warmup else stamps
    return (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")


def cpu_per_step(cpu_stamps: list[float], warmup: int) -> float:
    """Process CPU seconds (all threads) per timed step: what a step costs, whoever else runs."""
    r = rate(cpu_stamps, warmup)
    return round(1 / r, 3) if r == r and r else float("nan")


def parked_text_encoders_mib(base) -> float:
    """What the text-encoder offload keeps off the accelerator during the steps (0 on CPU)."""
    if base.device.type == "cpu":
        return 0.0
    parked = [m for m in base.torch_modules().values() if getattr(m, "_keep_placement", False)
              and next(m.parameters()).device.type == "cpu"]
    return round(sum(p.numel() * p.element_size() for m in parked for p in m.parameters()) / 2**20, 1)


FLOW_FAMILIES = {"FluxPipeline": "flux", "Flux2KleinPipeline": "flux2-klein", "ZImagePipeline": "z-image",
                 "QwenImagePipeline": "qwen-image"}


def family_name(model: Path) -> str:
    import json as _json

    return {"StableDiffusionXLPipeline": "sdxl", **FLOW_FAMILIES}.get(
        _json.loads((Path(model) / "model_index.json").read_text()).get("_class_name"), "sd")


def reference_args(a, model: Path, work: Path, resolution: int) -> list[str]:
    """The reference script's flags for the settings this benchmark trains with."""
    args = ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(work / "data" / "instance"),
            "--instance_prompt", "a photo of sks toy", "--output_dir", str(work / "reference-out"),
            "--resolution", str(resolution), "--train_batch_size", str(a.batch), "--rank", str(a.rank),
            "--max_train_steps", str(a.warmup + a.steps), "--learning_rate", "1e-4", "--lr_scheduler", "constant",
            "--lr_warmup_steps", "0", "--seed", "0", "--mixed_precision", a.mixed_precision,
            "--checkpointing_steps", str(10 ** 6), "--center_crop", "--report_to", "all"]  # "all" = whichever trackers are installed (none here)
    # The SDXL script has no --cache_latents (it encodes every step's images with the VAE;
    # this trainer caches the posterior when nothing is random); the SD one has.
    if family_name(model) == "sd":
        args += ["--cache_latents"] if "cache_latents" in Path(a.reference).read_text() else []
    family = family_name(model)
    if family in FLOW_FAMILIES.values():
        # This trainer caches latents (no random augmentation) and uses the pipelines' defaults:
        # uniform sigmas, guidance 3.5, Qwen3 hidden states 9/18/27 (the Klein script's own
        # default is 10/20/30; the pipeline's, which inference uses, is 9/18/27).
        args += ["--cache_latents", "--weighting_scheme", "none"]
        if family in ("flux", "flux2-klein"):
            args += ["--guidance_scale", "3.5"]
        if "--lora_alpha" in Path(a.reference).read_text():  # the Z-Image / Qwen-Image scripts default it to 4
            args += ["--lora_alpha", str(a.rank)]
        if family == "flux2-klein":
            args += ["--text_encoder_out_layers", "9", "18", "27"]
        if a.base_quantization != "none" and "bnb_quantization_config_path" in Path(a.reference).read_text():
            args += ["--bnb_quantization_config_path", str(bnb_config(work, a.base_quantization))]
    if a.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    if a.optimizer == "adamw8bit":
        args.append("--use_8bit_adam")
    if a.train_text_encoder:
        args.append("--train_text_encoder")
    return args


def bnb_config(work: Path, kind: str) -> Path:
    """The reference's --bnb_quantization_config_path (diffusers BitsAndBytesConfig kwargs)."""
    cfg = ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "bfloat16"} if kind == "nf4" else {"load_in_8bit": True})
    path = work / "bnb.json"
    path.write_text(json.dumps(cfg))
    return path


def run_reference(a, model: Path, work: Path, resolution: int) -> dict:
    out = work / "reference.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_reference.py"), "--json", str(out), str(a.reference),
           *reference_args(a, model, work, resolution)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the reference failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    timings = json.loads(out.read_text())
    result = {"script": str(a.reference), "steps_per_s": round(rate(timings["stamps"], a.warmup), 3),
              "cpu_s_per_step": cpu_per_step(timings["cpu_stamps"], a.warmup),
              "peak_rss_mib": timings["peak_rss_mib"], "torchvision": timings["torchvision"]}
    if "peak_cuda_allocated_mib" in timings:
        result["peak_cuda_allocated_mib"] = timings["peak_cuda_allocated_mib"]
    return result


def matrix(a, argv) -> list[dict]:
    results = []
    base_args = [x for x in argv if x not in ("--matrix",)]
    if "--mixed-precision" not in base_args:
        base_args += ["--mixed-precision", "bf16"]
    work = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    try:
        if not a.model:  # one build for all runs (a full-shape SDXL is ~14 GB, FLUX.1-dev more)
            base_args += ["--model", str(build_model(work / "model", a))]
        for extra in FLOW_MATRIX.get(a.arch, MATRIX):
            out = work / "result.json"
            cmd = [sys.executable, __file__, *[x for x in base_args if x != "--json"], *extra, "--json", str(out)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            results.append(json.loads(out.read_text()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def figures(r: dict) -> str:
    """steps/s and s/step, and peak memory: GPU allocated on CUDA, resident set size on CPU."""
    sps = r["steps_per_s"]
    spstep = f"{1 / sps:.3f} s/step" if sps and sps == sps else "n/a"
    mem = r.get("peak_cuda_allocated_mib", r["peak_rss_mib"])
    kind = "VRAM (torch allocated)" if "peak_cuda_allocated_mib" in r else "RSS"
    cpu = f", {r['cpu_s_per_step']} CPU-s/step" if "peak_cuda_allocated_mib" not in r else ""
    return f"{sps} steps/s ({spstep}{cpu}), peak {kind} {mem} MiB"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.arch in GPU_ONLY_ARCHES and not cuda_available():
        print(f"bench_train --arch {a.arch}: no CUDA GPU here; skipped (the published shape is measured on a GPU)")
        return 0
    if a.matrix:
        if a.json:  # the --json value must not be passed on to the children
            i = argv.index("--json")
            del argv[i:i + 2]
        results = matrix(a, argv)
    else:
        results = [bench(a)]
    for r in results:
        print(f"{r['family']} {r['arch']} {r['resolution']}px rank {r['rank']} batch {r['batch']} "
              f"{r['mixed_precision']} ckpt={r['gradient_checkpointing']} opt={r['optimizer']} "
              f"te={r['train_text_encoder']} base={r.get('base_quantization', 'none')} on {r['device']}: "
              f"{figures(r)}" + (f", text encoders parked off the GPU: {r['text_encoders_parked_off_gpu_mib']} MiB"
                                 if r.get("text_encoders_parked_off_gpu_mib") else ""))
        if "reference" in r:
            ref = r["reference"]
            print(f"  reference {Path(ref['script']).name} (same model, settings, images; torchvision "
                  f"{ref['torchvision']}; base {ref.get('base_quantization', 'none')}): {figures(ref)}")
            print(f"  output change of the trained LoRA (mean abs pixel diff to the base image, 0-255): "
                  f"ours {r['output_change']}, reference {ref['output_change']}")
    if a.json:
        a.json.write_text(json.dumps(results[0] if len(results) == 1 and not a.matrix else results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
