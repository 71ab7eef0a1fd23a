#!/usr/bin/env python3
"""Training throughput and peak memory of one LoRA task configuration.

    python scripts/bench_train.py [--model DIR | --arch tiny|sd15] [--resolution 512] [--rank 4]
        [--batch 1] [--steps 20] [--warmup 3] [--mixed-precision bf16] [--gradient-checkpointing]
        [--optimizer adamw8bit] [--train-text-encoder] [--threads N] [--json OUT.json]
    python scripts/bench_train.py --arch sd15 --matrix      # the README table, on a GPU

Runs the real training loop (``train.task.run_task``; previews and checkpoints off) and
reports steps/s over the steps after ``--warmup`` and peak memory: resident set size on CPU,
``torch.cuda.max_memory_allocated`` on a GPU. ``--arch sd15`` builds an SD1.5-shaped pipeline
with random weights (the real model's compute and memory, nothing downloaded). ``--matrix``
runs bf16 / rank 4 / batch 1 with and without gradient checkpointing and 8-bit AdamW, each in
its own process (accelerate fixes the mixed precision per process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# scripts/ is sys.path[0] when a script runs, so its sibling builders import directly.
import make_demo_data
import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
MATRIX = [[], ["--gradient-checkpointing"], ["--optimizer", "adamw8bit"],
          ["--gradient-checkpointing", "--optimizer", "adamw8bit"]]




def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a diffusers pipeline folder (default: build --arch into a temp dir)")
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny", help="pipeline to build when --model is not given")
    p.add_argument("--resolution", type=int, default=None, help="default: 512 for sd15, 64 for tiny")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--batch", type=int, default=1, help="train batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optimizer", choices=("adamw", "adamw8bit", "prodigy"), default="adamw")
    p.add_argument("--train-text-encoder", action="store_true")
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
    resolution = a.resolution or (512 if a.arch == "sd15" else 64)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = a.model or make_tiny_model.build_pipeline(work / "model", arch=a.arch)
    make_demo_data.make_demo_data(work / "data", count=4, size=resolution)

    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.task import run_task

    base = load_base(model, mixed_precision=a.mixed_precision)
    cuda = base.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(instance_data=str(work / "data" / "instance"), instance_prompt="a photo of sks toy",
                      resolution=resolution, rank=a.rank, train_batch_size=a.batch, mixed_precision=a.mixed_precision,
                      gradient_checkpointing=a.gradient_checkpointing, optimizer=a.optimizer,
                      train_text_encoder=a.train_text_encoder, max_train_steps=a.warmup + a.steps,
                      preview_every=0, checkpoint_every=0, preview_inference_steps=1, num_preview_images=1,
                      export="lora", export_check=False, log_every=max(1, a.warmup + a.steps))
    stamps: list[float] = []

    def record_step() -> bool:        # called once after every step: a free per-step clock
        stamps.append(time.perf_counter())
        return False

    try:
        run_task(base, cfg, model_dir=work / "out" / "model", checkpoint_dir=work / "out" / "ck",
                 stop_requested=record_step, task_id="bench")
    finally:
        shutil.rmtree(work, ignore_errors=True)   # an sd15 build is ~4 GB
    timed = stamps[a.warmup - 1:] if a.warmup else stamps
    steps_per_s = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    result = {
        "arch": a.arch if not a.model else str(a.model), "device": str(base.device),
        "resolution": resolution, "rank": a.rank, "batch": a.batch, "mixed_precision": a.mixed_precision,
        "gradient_checkpointing": a.gradient_checkpointing, "optimizer": a.optimizer,
        "train_text_encoder": a.train_text_encoder, "threads": torch.get_num_threads(), "timed_steps": a.steps,
        "steps_per_s": round(steps_per_s, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if cuda:
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def matrix(a, argv) -> list[dict]:
    results = []
    base_args = [x for x in argv if x not in ("--matrix",)]
    if "--mixed-precision" not in base_args:
        base_args += ["--mixed-precision", "bf16"]
    for extra in MATRIX:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, *[x for x in base_args if x != "--json"], *extra, "--json", f.name]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            results.append(json.loads(Path(f.name).read_text()))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.matrix:
        if a.json:  # the --json value must not be passed on to the children
            i = argv.index("--json")
            del argv[i:i + 2]
        results = matrix(a, argv)
    else:
        results = [bench(a)]
    for r in results:
        mem = r.get("peak_cuda_allocated_mib", r["peak_rss_mib"])
        kind = "GPU alloc" if "peak_cuda_allocated_mib" in r else "RSS"
        print(f"{r['arch']} {r['resolution']}px rank {r['rank']} batch {r['batch']} {r['mixed_precision']} "
              f"ckpt={r['gradient_checkpointing']} opt={r['optimizer']} te={r['train_text_encoder']} "
              f"on {r['device']}: {r['steps_per_s']} steps/s, peak {kind} {mem} MiB")
    if a.json:
        a.json.write_text(json.dumps(results[0] if len(results) == 1 and not a.matrix else results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
