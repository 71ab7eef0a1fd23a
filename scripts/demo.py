#!/usr/bin/env python3
"""`make demo`: the main job, emulated: six users' LoRAs trained by one 2-instance job, on CPU.

    python scripts/demo.py [--workdir build/demo] [--instances 2] [--gpus-per-host 2] [--steps 10]
                           [--resume] [--family sd|sdxl|flux|flux2-klein|z-image|qwen-image]

Builds the tiny random-weight pipeline, tiny scorer models (the `eval` channel) and synthetic
subject images for six users under WORKDIR/inputs (once), writes a six-task task list, and
runs `python -m fanout local` on it: two `train` processes, each with its own /opt/ml tree and
two slots (CPU slots here: one worker process and one base-model load each, as one per GPU on a
multi-GPU instance), the tasks split by the planner. Then prints one row per task (host, slot,
state, steps, seconds, LoRA), each task's quality scores and verdict (one task has a quality
gate it cannot pass), and where the previews are. One task points at a folder that does not exist, to show that a
bad task fails alone with its reason while the others train.

Every run starts a fresh job unless --resume (which continues a killed one, like a spot restart).
--family trains the same job on a tiny base of another family (`make demo DEMO_ARGS="--family flux"`).
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

# scripts/ is sys.path[0] when a script runs, so its sibling builders import directly.
import make_demo_data

ROOT = Path(__file__).resolve().parents[1]
USERS = ("ana", "ben", "chloe", "dev", "eli")

HYPERPARAMETERS = {
    "resolution": 32,          # tiny model, tiny images: the machinery, not the art
    "preview_every": 5,
    "num_preview_images": 1,
    "preview_inference_steps": 4,
    "checkpoint_every": 5,
    "log_every": 1,
    "learning_rate": 1e-4,
    "eval_inference_steps": 4,  # the evaluation renders as cheaply as the previews
    "screen": "drop",          # photos failing screening are left out (ana's duplicate), the rest train
}
FAMILIES = ("sd", "sdxl", "flux", "flux2-klein", "z-image", "qwen-image")
FAILS_ON_PURPOSE = "fay-toy"


def make_inputs(inputs: Path, family: str = "sd") -> tuple[Path, Path]:
    """The base model and one image folder per user (built once, reused by later runs)."""
    model, images = inputs / ("model" if family == "sd" else f"model-{family}"), inputs / "images"
    if not (model / "model_index.json").is_file():
        print(f"building the tiny {family} base model ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(model),
                        "--family", family], check=True, stdout=subprocess.DEVNULL)
    demo_data = make_demo_data
    for i, user in enumerate(USERS):
        if not (images / user).is_dir():
            tmp = inputs / "tmp" / user
            demo_data.make_demo_data(tmp, count=3, size=64, seed=i)
            images.mkdir(parents=True, exist_ok=True)
            (tmp / "instance").rename(images / user)
    shutil.rmtree(inputs / "tmp", ignore_errors=True)
    demo_data.add_phone_photos(images / USERS[0])   # a HEIC photo and a duplicate that screening drops
    return model, images


def make_scorers(inputs: Path) -> Path:
    """Tiny random-weight scorer models (clip/, dino/, face/), built once: the `eval` channel."""
    scorers = inputs / "eval"
    if not (scorers / "dino" / "config.json").is_file():
        print("building the tiny scorer models ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_scorers.py"), str(scorers)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return scorers


def task_list(steps: int) -> list[dict]:
    tasks = [{"task_id": f"{user}-toy", "user_id": user, "instance_data": user,
              "instance_prompt": f"a photo of sks toy, {user}'s", "metadata": {"order": n}}
             for n, user in enumerate(USERS, 1)]
    tasks[0]["validation_prompts"] = ["a photo of sks toy on a beach", "a sks toy in a forest"]
    tasks[1]["hyperparameters"] = {"max_train_steps": steps * 2, "rank": 8}  # a longer task: the planner balances it
    tasks[2]["hyperparameters"] = {"quality_gate": {"dino": 0.99}}  # a gate it cannot pass: failed_quality
    tasks.append({"task_id": FAILS_ON_PURPOSE, "user_id": "fay", "instance_data": "fay-never-uploaded",
                  "instance_prompt": "a photo of sks toy"})
    return tasks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo", help="where everything goes")
    p.add_argument("--instances", type=int, default=2, help="emulated instances (default: 2)")
    p.add_argument("--gpus-per-host", type=int, default=2, help="slots per instance (default: 2)")
    p.add_argument("--steps", type=int, default=10, help="training steps per task (default: 10)")
    p.add_argument("--resume", action="store_true", help="continue the job in WORKDIR/job instead of a fresh one")
    p.add_argument("--family", choices=FAMILIES, default="sd",
                   help="the tiny base model's family (default: sd; see docs/families.md)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    work = a.workdir.resolve()
    model, images = make_inputs(work / "inputs", a.family)
    scorers = make_scorers(work / "inputs")
    tasks_file = work / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t) + "\n" for t in task_list(a.steps)))
    job = work / "job"
    if job.exists() and not a.resume:
        shutil.rmtree(job)
    hp = {**HYPERPARAMETERS, "max_train_steps": a.steps}
    cmd = [sys.executable, "-m", "fanout", "local", "--tasks", str(tasks_file), "--model", str(model),
           "--images", str(images), "--eval-models", str(scorers), "--instances", str(a.instances),
           "--gpus-per-host", str(a.gpus_per_host), "--workdir", str(job),
           "--hyperparameters", json.dumps(hp), "--quiet"]
    print(f"running a {a.instances}-instance job ({a.gpus_per_host} slots each) with {len(task_list(a.steps))} tasks "
          f"(host logs: {job / 'logs'}) ...", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    print(f"\njob exit code {rc}; the demo took {time.monotonic() - t0:.0f} s")
    grids = sorted((job / "s3" / "checkpoints").glob("*/previews/step-*/grid.png"))
    if grids:
        print(f"latest preview grid of each task, e.g. {grids[-1]}")
    print(f"LoRAs (as model.tar.gz would unpack): {job / 's3' / 'model'}")
    from train.quality.table import quality_table

    print(f"\nquality (scores of random-weight scorers: the machinery, not a judgement; docs/quality.md):\n"
          f"{quality_table(job / 's3' / 'checkpoints')}")
    print(f"{FAILS_ON_PURPOSE} fails on purpose (its image folder was never uploaded); the others do not care.")
    print("\n".join(make_demo_data.screening_lines(job / "s3" / "checkpoints")))
    from fanout.lifecycle import format_events, local_job_events   # the app's view (docs/fanout.md#lifecycle-events)
    print("\n" + format_events(local_job_events(job, task_list(a.steps))))
    unexpected = unexpected_outcomes(job, task_list(a.steps))
    if rc == 0 and not unexpected:  # then serve two of the users' LoRAs over HTTP from one base
        import serve_demo

        unexpected += serve_demo.run(model, job / "s3" / "model", [f"{u}-toy" for u in USERS[:2]], work / "serve")
    if (job / "report.html").is_file():  # written by `fanout local` (report/: every task, its page, the cost)
        print(f"\njob report (open it in a browser): {job / 'report.html'}")
    if unexpected:
        print("the demo did not go as it should: " + "; ".join(unexpected), file=sys.stderr)
    return rc or (1 if unexpected else 0)


def unexpected_outcomes(job: Path, tasks: list[dict]) -> list[str]:
    """Every task but the one meant to fail must have completed (what CI checks of the demo)."""
    outcomes = {t["task_id"]: t for p in (job / "s3" / "output").glob("*/summary.json")
                for t in json.loads(p.read_text())["tasks"]}
    problems = []
    for task in tasks:
        tid = task["task_id"]
        want = "failed" if tid == FAILS_ON_PURPOSE else "completed"
        got = outcomes.get(tid, {}).get("outcome", "missing")
        if got != want:
            error = outcomes.get(tid, {}).get("error")
            problems.append(f"{tid}: {got} (expected {want})" + (f": {error}" if error else ""))
    return problems


if __name__ == "__main__":
    sys.exit(main())
