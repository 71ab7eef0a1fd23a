#!/usr/bin/env python3
"""Slots: throughput of one host with 1 slot against the same host with G slots.

    python scripts/bench_slots.py [--tasks 12] [--steps 30] [--threads 2] [--repeat 3] [--json OUT]   # CPU
    python scripts/bench_slots.py --gpu [--model DIR] [--tasks 16] [--steps 200] \\
        [--resolution 512] [--mixed-precision bf16] [--json OUT]                          # a multi-GPU host

CPU: the same N tiny tasks twice through the real `train` entry point (one host, warm slots):
``1 slot x T threads`` (gpus_per_host=1, torch gets all T threads) against ``T slots x 1
thread`` (gpus_per_host=T). An honest CPU figure for this machine, not a GPU claim: on CPU
both configurations share the same cores, so the difference is how well one task uses T
threads against T tasks using one each.

--gpu: 1 slot (one GPU) against one slot per visible GPU (the host's real layout). Exits 0
saying so when no GPU is visible; with one GPU it runs the 1-slot figure only.

Figures per run: wall time of the whole `train` process, tasks per minute on that wall time,
and the tasks' makespan (first task start after its base load to the last task end, from
summary.json), so slot start-up (one base load per slot, in parallel) is visible apart. With
--repeat N the two configurations alternate N times and the medians are printed (a shared
machine's load moves figures by more than the difference being measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_worker  # scripts/ is sys.path[0] when a script runs

ROOT = Path(__file__).resolve().parents[1]


def run_host(work: Path, name: str, model: Path, images: Path, n: int, hp: dict, threads: int) -> dict:
    base = bench_worker.write_job(work / name, model, images, n, hp)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "container"], cwd=ROOT, capture_output=True, text=True,
                          env=bench_worker._env(threads, SAGEMAKER_BASE_DIR=str(base)))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: train exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    summary = json.loads((base / "output/data/algo-1/summary.json").read_text())
    steps = sum(t["step"] for t in summary["tasks"])
    return {"slots": summary["slots"], "threads_per_slot": summary["slot_processes"][0]["threads"],
            "wall_s": round(wall, 2), "makespan_s": summary["makespan_seconds"],
            "tasks_per_min": round(60 * n / wall, 2), "tasks_per_min_makespan": round(60 * n / summary["makespan_seconds"], 2),
            "steps_per_s": round(steps / summary["makespan_seconds"], 2),
            "base_model_loads": summary["base_model_loads"], "base_model_s": summary["base_model_seconds"],
            "by_slot": [p["tasks"] for p in summary["slot_processes"]]}


def median(runs: list[dict]) -> dict:
    """Per-figure medians of several runs of one configuration."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            out[key] = round(statistics.median(r[key] for r in runs), 2)
    return out


def show(label: str, r: dict) -> None:
    print(f"{label:22} wall {r['wall_s']:7.1f} s  {r['tasks_per_min']:6.2f} tasks/min  "
          f"makespan {r['makespan_s']:6.1f} s ({r['tasks_per_min_makespan']:.2f} tasks/min, {r['steps_per_s']:.1f} steps/s)  "
          f"loads {r['base_model_loads']} ({r['base_model_s']:.1f} s)  tasks by slot {r['by_slot']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=12, help="tasks per run (default: 12)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the runs N times, print medians (default: 1)")
    p.add_argument("--steps", type=int, default=30, help="training steps per task (default: 30)")
    p.add_argument("--threads", type=int, default=2, help="CPU: the host's threads T (default: 2)")
    p.add_argument("--resolution", type=int, default=None, help="training resolution (default: 32 on CPU, 512 on GPU)")
    p.add_argument("--gpu", action="store_true", help="compare 1 GPU slot with one slot per visible GPU")
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the tiny SD pipeline)")
    p.add_argument("--mixed-precision", default=None, help="mixed_precision (default: no on CPU, bf16 on GPU)")
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-slots", help="scratch folder")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    gpus = []
    if a.gpu:
        sys.path.insert(0, str(ROOT))
        from container.devices import host_threads, visible_gpus

        gpus = visible_gpus()
        if not gpus:
            print("no GPU visible (CUDA_VISIBLE_DEVICES / nvidia-smi): the multi-GPU comparison needs a CUDA host; "
                  "nothing run")
            return 0
        a.threads = host_threads()
    model, images = bench_worker._inputs(work, a.tasks)
    model = a.model.resolve() if a.model else model
    hp = {**bench_worker.SETTINGS, "max_train_steps": a.steps, "resolution": a.resolution or (512 if a.gpu else 32),
          "mixed_precision": a.mixed_precision or ("bf16" if a.gpu else "no")}
    many = len(gpus) if a.gpu else a.threads
    where = f"{len(gpus)} GPU(s)" if a.gpu else f"{a.threads} CPU thread(s)"
    print(f"{a.tasks} tasks x {a.steps} steps at {hp['resolution']} px on {where}", flush=True)
    runs: dict[str, list[dict]] = {"one_slot": [], "slots": []}
    for _ in range(a.repeat):  # alternating, so a change in the machine's load hits both alike
        runs["one_slot"].append(run_host(work, "one-slot", model, images, a.tasks, {**hp, "gpus_per_host": 1}, a.threads))
        show(f"1 slot x {runs['one_slot'][-1]['threads_per_slot']} thread(s)", runs["one_slot"][-1])
        if many > 1:
            runs["slots"].append(run_host(work, "slots", model, images, a.tasks, {**hp, "gpus_per_host": many}, a.threads))
            show(f"{many} slots x {runs['slots'][-1]['threads_per_slot']} thread(s)", runs["slots"][-1])
    one = median(runs["one_slot"])
    results = {"tasks": a.tasks, "steps": a.steps, "repeat": a.repeat, "hyperparameters": hp, "one_slot": one, "runs": runs}
    if many > 1:
        multi = results["slots"] = median(runs["slots"])
        if a.repeat > 1:
            show("median, 1 slot", one)
            show(f"median, {many} slots", multi)
        print(f"throughput {many} slots / 1 slot: {multi['tasks_per_min'] / one['tasks_per_min']:.2f}x on wall time, "
              f"{multi['tasks_per_min_makespan'] / one['tasks_per_min_makespan']:.2f}x on the tasks' makespan")
    else:
        print("one GPU visible: the multi-slot run needs at least 2")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
