#!/usr/bin/env python3
"""How big a large job's page is and how fast headless Chromium renders it (report/).

    python scripts/bench_report.py [--tasks 500] [--hosts 16] [--image-size 512] [--workdir build/bench-report]

Builds a synthetic `fanout local`-shaped job folder (every task with a status, a 400-step loss
curve, previews of --image-size px cut from real photographs; some failed, verdicts on the rest), writes its job page and
one task page the way `fanout report` does, then opens each in Debian's chromium (Playwright,
offline) and prints the page size, the time to write it, and the browser's time to the load
event (median of 3). Targets (issue 18): a 500-task job page under 25 MB, rendered in under 3 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def photo_png(path: Path, size: int, seed: int) -> None:
    """A crop of a real photograph (scikit-image's bundled ones): thumbnails weigh what a real
    preview's do, which a flat or noisy synthetic image would not."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photo = Image.fromarray(getattr(skimage.data, PHOTOS[seed % len(PHOTOS)])()).convert("RGB")
    side = int(min(photo.size) * rng.uniform(0.6, 1.0))
    left, top = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
    image = photo.crop((left, top, left + side, top + side)).resize((size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, compress_level=1)


def make_job(work: Path, tasks: int, hosts: int, size: int, steps: int = 400) -> None:
    rng = random.Random(0)
    ck = work / "s3" / "checkpoints"
    names = [f"user{i:04d}.req{i % 7}" for i in range(tasks)]
    per_host: dict[int, list[dict]] = {h: [] for h in range(hosts)}
    clock = {h: 0.0 for h in range(hosts)}
    curve = "".join(json.dumps({"step": s, "loss": 0.2 + 0.1 / s + rng.random() * 0.05, "lr": 1e-4,
                                "seconds": s * 0.9}) + "\n" for s in range(1, steps + 1))
    for i, task_id in enumerate(names):
        host = min(clock, key=clock.get)
        seconds = rng.uniform(300, 500)
        failed = i % 50 == 7
        start, clock[host] = clock[host], clock[host] + seconds + rng.uniform(0, 5)
        folder = ck / task_id
        folder.mkdir(parents=True)
        status = {"task_id": task_id, "user_id": task_id.split(".")[0], "host": f"algo-{host + 1}",
                  "state": "failed" if failed else "completed", "step": 120 if failed else steps, "total_steps": steps,
                  "loss": 0.21, "attempts": 1, "error": "loss became nan at step 120; lower --learning-rate" if failed else None,
                  "timings": {"data": 2.0, "encoding": 3.0, "training": seconds * 0.8, "previews": seconds * 0.1,
                              "export": seconds * 0.05}}
        if not failed:
            status["quality"] = {"verdict": rng.choice(["passed", "passed", "needs_review", "failed_quality"]),
                                 "scores": {"dino": 0.6, "clip_i": 0.8, "clip_t": 0.3}}
        (folder / "status.json").write_text(json.dumps(status))
        (folder / "metrics.jsonl").write_text(curve)
        last = f"previews/step-{steps:06d}"
        photo_png(folder / last / "0.png", size, seed=i)
        (folder / last / "prompts.json").write_text(json.dumps({"step": steps, "images": [
            {"file": "0.png", "prompt": "a photo of sks person on a beach", "seed": 1}]}))
        per_host[host].append({"task_id": task_id, "outcome": status["state"], "step": status["step"],
                               "loss": 0.21, "seconds": round(seconds, 3), "user_id": status["user_id"],
                               "started_at": _iso(start), "finished_at": _iso(start + seconds),
                               "error": status["error"]})
    for h, entries in per_host.items():
        out = work / "s3" / "output" / f"algo-{h + 1}"
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({
            "host": f"algo-{h + 1}", "host_index": h, "started_at": _iso(-60.0), "finished_at": _iso(clock[h]),
            "base_model_seconds": 55.0, "tasks": entries}))
    tree = work / "algo-1" / "input"
    (tree / "data" / "tasks").mkdir(parents=True)
    (tree / "config").mkdir(parents=True)
    (tree / "data" / "tasks" / "tasks.jsonl").write_text("".join(
        json.dumps({"task_id": t, "instance_data": t, "instance_prompt": "a photo of sks person",
                    "hyperparameters": {"max_train_steps": steps}}) + "\n" for t in names))
    (tree / "config" / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": [f"algo-{h + 1}" for h in range(hosts)], "current_instance_type": "ml.g5.xlarge"}))
    (tree / "config" / "hyperparameters.json").write_text("{}")


def make_task(folder: Path, size: int, prompts: int = 4, steps: int = 12) -> None:
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"task_id": "one-task", "state": "completed", "step": 1200,
                                                    "timings": {"training": 900.0, "previews": 120.0}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1 + 1 / s, "lr": 1e-4, "seconds": s})
                                                  + "\n" for s in range(1, 1201)))
    for k in range(1, steps + 1):
        step = k * 100
        index = []
        for p in range(prompts):
            photo_png(folder / f"previews/step-{step:06d}/{p}.png", size, seed=k * 10 + p)
            index.append({"file": f"{p}.png", "prompt": f"prompt number {p}", "seed": p})
        (folder / f"previews/step-{step:06d}/prompts.json").write_text(json.dumps({"step": step, "images": index}))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_780_000_000 + seconds))


def render_seconds(path: Path, runs: int = 3) -> float:
    """Median seconds from navigation start to the load event in headless Chromium (offline)."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        for _ in range(runs):
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.goto(path.resolve().as_uri(), wait_until="load")
            times.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000.0)
            context.close()
        browser.close()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--tasks", type=int, default=500)
    a.add_argument("--hosts", type=int, default=16)
    a.add_argument("--image-size", type=int, default=512)
    a.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-report")
    args = a.parse_args(argv)
    import shutil

    from report.job import write_local_job_page
    from report.task import write_task_page

    shutil.rmtree(args.workdir, ignore_errors=True)
    t0 = time.perf_counter()
    make_job(args.workdir / "job", args.tasks, args.hosts, args.image_size)
    make_task(args.workdir / "task", args.image_size)
    print(f"synthetic job: {args.tasks} tasks on {args.hosts} hosts, {args.image_size} px previews "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    # The container writes each task's page when the task ends; time one, then write the rest.
    folders = sorted(p for p in (args.workdir / "job" / "s3" / "checkpoints").iterdir() if p.is_dir())
    t = time.perf_counter()
    for folder in folders:
        write_task_page(folder)
    print(f"task pages of the job: {len(folders)} written in {time.perf_counter() - t:.1f} s "
          f"({(time.perf_counter() - t) / len(folders):.2f} s each, what the container adds per task)")
    for label, write in (("job page", lambda: write_local_job_page(args.workdir / "job")),
                         ("task page (12 steps x 4 prompts, 1200-step curve)", lambda: write_task_page(args.workdir / "task"))):
        t = time.perf_counter()
        page = write()
        written = time.perf_counter() - t
        size = page.stat().st_size
        print(f"{label}: {size / 1e6:.2f} MB, written in {written:.2f} s, "
              f"rendered in {render_seconds(page):.2f} s (headless chromium, load event, median of 3)  {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
