#!/usr/bin/env python3
"""Per-task fixed overhead: the container's warm worker vs a fresh process per task.

    python scripts/bench_worker.py [--tasks 8] [--steps 10] [--workdir build/bench-worker] [--json OUT]

Trains the same N tiny tasks twice, in one run:

  warm    one `train` container process (SageMaker tree, one host): the base model is loaded
          once, each task attaches a fresh LoRA, trains, exports, detaches
  fresh   `python -m train` once per task, as trainers that start a process per user do:
          every task pays interpreter start, torch/diffusers imports and the model load

Overhead per task = (wall time of all N tasks - time inside training steps) / N, where the
step time of each task comes from its manifest (steps / steps_per_second, measured by the
training loop itself). Previews are cut to one 1-step image and the export check is off, so
what is left is the fixed cost a task pays around its steps. Both modes run with the same
thread count (--threads, default 1) so their steps cost the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"resolution": 32, "preview_every": 0, "num_preview_images": 1, "preview_inference_steps": 1,
            "checkpoint_every": 0, "log_every": 1, "export": "lora", "export_check": False}


def _inputs(work: Path, n: int) -> tuple[Path, Path]:
    model, images = work / "model", work / "images"
    if not (model / "model_index.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts/make_tiny_model.py"), str(model)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not images.is_dir():
        for i in range(n):
            subprocess.run([sys.executable, str(ROOT / "scripts/make_demo_data.py"), str(work / "tmp" / f"u{i}"),
                            "--count", "2", "--size", "48", "--seed", str(i)], check=True, stdout=subprocess.DEVNULL)
            images.mkdir(parents=True, exist_ok=True)
            (work / "tmp" / f"u{i}" / "instance").rename(images / f"u{i}")
        shutil.rmtree(work / "tmp", ignore_errors=True)
    return model, images


def _env(threads: int, **extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    env.update(extra)
    return env


def _step_seconds(manifest: Path, steps: int) -> float:
    """Seconds inside the training steps, as the loop measured them (found anywhere in the manifest)."""
    def find(node):
        if isinstance(node, dict):
            if "steps_per_second" in node:
                return node["steps_per_second"]
            for value in node.values():
                found = find(value)
                if found:
                    return found
        return None

    rate = find(json.loads(manifest.read_text()))
    if not rate:
        raise SystemExit(f"{manifest}: no steps_per_second recorded")
    return steps / rate


def write_job(base: Path, model: Path, images: Path, n: int, hyperparameters: dict) -> Path:
    """A one-host SageMaker tree at ``base``: N tasks t<i> on the images u<i>, SDK-encoded hyperparameters."""
    shutil.rmtree(base, ignore_errors=True)
    config, data = base / "input/config", base / "input/data"
    config.mkdir(parents=True)
    (data / "tasks").mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {"TrainingInputMode": "File"} for c in ("tasks", "model", "images")}))
    (data / "tasks/tasks.jsonl").write_text("".join(
        json.dumps({"task_id": f"t{i}", "instance_data": f"u{i}", "instance_prompt": "a photo of sks toy"}) + "\n"
        for i in range(n)))
    (data / "model").symlink_to(model.resolve())
    (data / "images").symlink_to(images.resolve())
    return base


def run_warm(work: Path, model: Path, images: Path, n: int, steps: int, threads: int) -> dict:
    base = write_job(work / "warm", model, images, n, {**SETTINGS, "max_train_steps": steps})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "container"], env=_env(threads, SAGEMAKER_BASE_DIR=str(base)),
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"warm worker failed:\n{proc.stdout[-3000:]}")
    stepping = sum(_step_seconds(base / "model" / f"t{i}" / "manifest.json", steps) for i in range(n))
    summary = json.loads((base / "output/data/algo-1/summary.json").read_text())
    in_tasks = sum(t["seconds"] for t in summary["tasks"])
    return {"wall_s": wall, "step_s": stepping, "overhead_per_task_s": (wall - stepping) / n,
            # The same, leaving out the host's one-time start (interpreter, imports, one model load).
            "overhead_per_task_after_start_s": (in_tasks - stepping) / n,
            "start_s": wall - in_tasks, "base_model_load_s": summary["base_model_seconds"]}


def run_fresh(work: Path, model: Path, images: Path, n: int, steps: int, threads: int) -> dict:
    out = work / "fresh"
    shutil.rmtree(out, ignore_errors=True)
    flags = []
    for name, value in {**SETTINGS, "max_train_steps": steps}.items():
        flag = "--" + name.replace("_", "-")
        flags += ([flag] if value is True else [f"--no-{name.replace('_', '-')}"] if value is False else [flag, str(value)])
    wall = stepping = 0.0
    for i in range(n):
        cmd = [sys.executable, "-m", "train", "--pretrained-model", str(model), "--instance-data", str(images / f"u{i}"),
               "--instance-prompt", "a photo of sks toy", "--output-dir", str(out / f"t{i}"), "--task-id", f"t{i}", *flags]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(threads), cwd=ROOT, capture_output=True, text=True)
        wall += time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"python -m train failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        stepping += _step_seconds(out / f"t{i}" / "model" / "manifest.json", steps)
    return {"wall_s": wall, "step_s": stepping, "overhead_per_task_s": (wall - stepping) / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=8, help="tasks per mode (default: 8)")
    p.add_argument("--steps", type=int, default=10, help="training steps per task (default: 10)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in both modes (default: 1)")
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-worker", help="scratch folder")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, images = _inputs(work, a.tasks)
    print(f"{a.tasks} tiny tasks x {a.steps} steps, {a.threads} thread(s), resolution {SETTINGS['resolution']}", flush=True)
    warm = run_warm(work, model, images, a.tasks, a.steps, a.threads)
    print(f"warm worker   wall {warm['wall_s']:7.1f} s  in steps {warm['step_s']:6.1f} s  "
          f"overhead/task {warm['overhead_per_task_s']:6.2f} s  (one-time start {warm['start_s']:.1f} s, "
          f"then {warm['overhead_per_task_after_start_s']:.2f} s/task)", flush=True)
    fresh = run_fresh(work, model, images, a.tasks, a.steps, a.threads)
    print(f"fresh process wall {fresh['wall_s']:7.1f} s  in steps {fresh['step_s']:6.1f} s  "
          f"overhead/task {fresh['overhead_per_task_s']:6.2f} s", flush=True)
    ratio = fresh["overhead_per_task_s"] / max(warm["overhead_per_task_s"], 1e-9)
    print(f"fresh/warm overhead ratio: {ratio:.1f}x")
    if a.json:
        a.json.write_text(json.dumps({"tasks": a.tasks, "steps": a.steps, "threads": a.threads, "warm": warm,
                                      "fresh": fresh, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
