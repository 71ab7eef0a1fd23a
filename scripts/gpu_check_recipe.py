#!/usr/bin/env python3
"""On a GPU: does a task that sets nothing (the family's default recipe) fit its target GPU?

    python scripts/gpu_check_recipe.py [--arch flux2-klein-4b] [--variant base] [--steps 10] [--json OUT]
    python scripts/gpu_check_recipe.py --cpu --resolution 64 --steps 2   # the same path, tiny model, no target

Builds the full-shape model with random weights (``scripts/make_tiny_model.py --arch``, in a
child process: published shapes, nothing downloaded), resolves the recipe for a task that sets
only its images, prompt and a short step count (``train.recipes``: precision, rank, optimizer,
resolution, checkpointing, quantized base, preview steps and guidance as this GPU gets them),
trains it with ``run_task`` (the end-of-training previews included) and prints steps/s and the
peak GPU memory against the target in ``TARGETS``. Exits 1 when the peak is over the target,
0 when it fits, and 0 with a note on a machine without CUDA (``--cpu`` runs the same path on
the family's tiny model instead, to check the script, not the memory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# arch -> the variant a user trains and the memory the recipe is meant to fit (GiB of the GPU).
TARGETS = {
    "flux2-klein-4b": {"variant": "base", "target_gib": 24.0,
                       "why": "FLUX.2 klein Base 4B at 1024 px on a 24 GB GPU (ml.g5 A10G, ml.g6 L4)"},
}


def build(arch: str, variant: str, out: Path, *, tiny: bool) -> Path:
    import make_tiny_model

    shape = ["--family", make_tiny_model.ARCHES[arch]] if tiny else ["--arch", arch]
    cmd = [sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(out), *shape, "--variant", variant]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(TARGETS), default="flux2-klein-4b")
    p.add_argument("--variant", default=None, help="default: the one TARGETS names (klein: base)")
    p.add_argument("--steps", type=int, default=10, help="training steps (the recipe's own count is 1000)")
    p.add_argument("--cpu", action="store_true", help="no GPU: run the path on the tiny model (checks the script)")
    p.add_argument("--resolution", type=int, default=None, help="override the recipe's (only with --cpu)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.cpu:
        print("gpu_check_recipe: no CUDA GPU here; skipped (the recipe's memory target is a GPU's)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="gpu-check-recipe-"))
    try:  # a full-shape klein 4B build is ~16 GB on disk
        return check(a, work, cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(a, work: Path, cuda: bool) -> int:
    import torch

    import make_demo_data
    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.recipes import resolve_for_model
    from train.task import run_task

    target = TARGETS[a.arch]
    model = build(a.arch, a.variant or target["variant"], work / "model", tiny=not cuda)
    given = {"resolution": a.resolution} if a.resolution and not cuda else {}
    make_demo_data.make_demo_data(work / "data", count=4, size=given.get("resolution", 1024))
    cfg = resolve_for_model(TrainConfig(pretrained_model=str(model), instance_data=str(work / "data" / "instance"),
                                        instance_prompt="a photo of sks toy", max_train_steps=a.steps,
                                        checkpoint_every=0, export="lora", export_check=False, **given))
    print(cfg.recipe.summary())
    base = load_base(model, mixed_precision=cfg.mixed_precision, base_quantization=cfg.base_quantization)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []

    def step_clock() -> bool:  # run_task asks after every step: a free per-step clock
        stamps.append(time.perf_counter())
        return False

    t0 = time.perf_counter()
    result = run_task(base, cfg, model_dir=work / "out" / "model", checkpoint_dir=work / "out" / "ck",
                      stop_requested=step_clock, task_id="recipe")
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    timed = stamps[1:]
    report = {"arch": a.arch if cuda else f"tiny {a.arch} family (--cpu)", "variant": cfg.recipe.variant,
              "device": torch.cuda.get_device_name() if cuda else "cpu", "recipe": cfg.recipe.to_manifest(),
              "task": result.state, "steps": a.steps, "resolution": cfg.resolution,
              "steps_per_s": round((len(timed) - 1) / (timed[-1] - timed[0]), 3) if len(timed) > 1 else None,
              "task_seconds": round(time.perf_counter() - t0, 1),
              "peak_cuda_allocated_gib": round(peak_gib, 2) if cuda else None, "target_gib": target["target_gib"],
              "target": target["why"], "fits": peak_gib <= target["target_gib"] if cuda else None}
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return 0 if result.state == "completed" and report["fits"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
