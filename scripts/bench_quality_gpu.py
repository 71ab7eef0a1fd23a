#!/usr/bin/env python3
"""On a CUDA GPU: the evaluation's share of a task's wall time for SD 1.5, SDXL and FLUX.1-dev shapes.

    python scripts/bench_quality_gpu.py [--arch sd15 sdxl flux-dev] [--steps 400] [--tasks 2]
                                        [--workdir build/bench-quality-gpu] [--json OUT]

Per arch: a random-weight pipeline of the published shape (scripts/make_tiny_model.py --arch),
scorers of the published shapes (CLIP ViT-L/14, DINOv2-base, scripts/make_tiny_scorers.py
--full, plus the face models), instance photos at the family's resolution; then ``--tasks``
tasks on one loaded base in bf16 with every other setting at its TrainConfig default (FLUX:
gradient checkpointing on). Prints one line per arch: task wall seconds, evaluation seconds
(render / score), images and the share on a warm host (the tasks after the first, whose
base-model drift renders come from the host's cache), and peak VRAM. With ``--steps`` below
400 the projected share at 400 steps is printed too (the rest of the task scaled by the
step count). Without CUDA it says so and exits 0: scripts/bench_quality.py is the CPU figure.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

RESOLUTION = {"sd15": 512, "sdxl": 1024, "flux-dev": 1024}
DEFAULT_STEPS = 400


def inputs(work: Path, arch: str) -> tuple[Path, Path, Path]:
    import make_demo_data
    import make_tiny_model
    import make_tiny_scorers

    model, photos, scorers = work / arch, work / f"photos-{RESOLUTION[arch]}", work / "eval-full"
    if not (model / "model_index.json").is_file():
        make_tiny_model.build_pipeline(model, arch=arch)
    if not photos.is_dir():
        make_demo_data.make_demo_data(work / f"tmp-{arch}", count=4, size=RESOLUTION[arch], seed=1)
        (work / f"tmp-{arch}" / "instance").rename(photos)
    if not (scorers / "dino" / "config.json").is_file():
        make_tiny_scorers.build_scorers(scorers, full=True)
    return model, photos, scorers


def bench(arch: str, args) -> dict:
    import torch

    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.quality import load_scorers
    from train.task import run_task

    model, photos, scorer_dir = inputs(args.workdir, arch)
    base, scorers = load_base(model, mixed_precision="bf16"), load_scorers(scorer_dir)
    torch.cuda.reset_peak_memory_stats()
    rows = []
    for k in range(args.tasks):
        cfg = TrainConfig(instance_data=str(photos), instance_prompt="a photo of sks person", seed=k,
                          resolution=RESOLUTION[arch], max_train_steps=args.steps, mixed_precision="bf16",
                          gradient_checkpointing=arch == "flux-dev")
        out = args.workdir / "runs" / arch / f"t{k}"
        t0 = time.perf_counter()
        with redirect_stdout(io.StringIO()):
            run_task(base, cfg, model_dir=out / "model", checkpoint_dir=out / "ck", scorers=scorers, task_id=f"t{k}")
        quality = json.loads((out / "ck" / "status.json").read_text())["quality"]
        rows.append({"wall": time.perf_counter() - t0, "evaluation": quality["seconds"],
                     "timings": quality.get("timings", {}), "images": len(quality["images"])})
    warm = rows[1:] or rows
    wall, evaluation = sum(r["wall"] for r in warm), sum(r["evaluation"] for r in warm)
    projected = evaluation / (evaluation + (wall - evaluation) * DEFAULT_STEPS / args.steps)
    del base, scorers
    torch.cuda.empty_cache()
    return {"arch": arch, "resolution": RESOLUTION[arch], "steps": args.steps, "tasks": rows,
            "warm_share": evaluation / wall, "projected_share_400": projected,
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", choices=tuple(RESOLUTION), default=list(RESOLUTION))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-quality-gpu")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs one (scripts/bench_quality.py measures the tiny models on the CPU)")
        return 0
    from train.cli import quiet_library_progress_bars

    quiet_library_progress_bars()
    results = []
    print(f"{'arch':9} {'px':>5} {'steps':>5} {'task s':>7} {'eval s':>7} {'render':>7} {'score':>6} {'images':>6} "
          f"{'share':>6} {'@400':>6} {'VRAM GiB':>8}   ({torch.cuda.get_device_name()})")
    for arch in a.arch:
        r = bench(arch, a)
        results.append(r)
        last = r["tasks"][-1]
        print(f"{arch:9} {r['resolution']:>5} {r['steps']:>5} {last['wall']:>7.1f} {last['evaluation']:>7.1f} "
              f"{last['timings'].get('render', 0):>7.1f} {last['timings'].get('score', 0):>6.2f} {last['images']:>6} "
              f"{r['warm_share']:>6.1%} {r['projected_share_400']:>6.1%} {r['peak_vram_gib']:>8.1f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
