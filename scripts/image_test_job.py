#!/usr/bin/env python3
"""The SageMaker-shaped /opt/ml trees `make image-test` runs the image on, and the checks of what
the container left in them (read on the host side, as SageMaker would upload them).

    python scripts/image_test_job.py make JOB_DIR --tasks 2 --steps 4
    python scripts/image_test_job.py check-done JOB_DIR
    python scripts/image_test_job.py check-stopped JOB_DIR
    python scripts/image_test_job.py check-image-lock PIP_FREEZE_FILE

Trees hold real copies (no symlinks: the folder is mounted into a container), config files as
SageMaker writes them (every hyperparameter a JSON-encoded string, the instance-group shape of
resourceconfig.json). Each check exits 1 naming the file and what was wrong.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

# scripts/ is sys.path[0] when a script runs, so its sibling builders import directly.
import make_demo_data
import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
HOST = "algo-1"
HYPERPARAMETERS = {"resolution": 32, "preview_every": 0, "num_preview_images": 1, "preview_inference_steps": 2,
                   "checkpoint_every": 2, "log_every": 1}


class CheckFailed(Exception):
    pass


def make_job(job: Path, *, tasks: int, steps: int, model_cache: Path) -> None:
    if job.exists():
        shutil.rmtree(job)
    data, config = job / "input" / "data", job / "input" / "config"
    if not (model_cache / "model_index.json").is_file():
        make_tiny_model.build_pipeline(model_cache)
    shutil.copytree(model_cache, data / "model")
    task_list = []
    for i in range(tasks):
        user = f"user{i}"
        tmp = job / "_tmp" / user
        make_demo_data.make_demo_data(tmp, count=2, size=48, seed=i)
        shutil.copytree(tmp / "instance", data / "images" / user)
        task_list.append({"task_id": f"{user}-toy", "user_id": user, "instance_data": user,
                          "instance_prompt": "a photo of sks toy"})
    shutil.rmtree(job / "_tmp")
    (data / "tasks").mkdir(parents=True)
    (data / "tasks" / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in task_list))
    config.mkdir(parents=True)
    hp = {**HYPERPARAMETERS, "max_train_steps": steps}
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hp.items()}))
    group = {"instance_group_name": "homogeneousCluster", "instance_type": "ml.g5.xlarge", "hosts": [HOST]}
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": HOST, "current_instance_type": "ml.g5.xlarge", "current_group_name": "homogeneousCluster",
        "hosts": [HOST], "instance_groups": [group], "network_interface_name": "eth0"}))
    channels = {c: {"TrainingInputMode": "File"} for c in ("tasks", "model", "images")}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    for out in ("model", "checkpoints", "output"):
        (job / out).mkdir()


def _json(path: Path) -> dict:
    if not path.is_file():
        raise CheckFailed(f"{path} is missing")
    return json.loads(path.read_text())


def _task_ids(job: Path) -> list[str]:
    lines = (job / "input" / "data" / "tasks" / "tasks.jsonl").read_text().splitlines()
    return [json.loads(line)["task_id"] for line in lines if line.strip()]


def check_done(job: Path) -> str:
    summary = _json(job / "output" / "data" / HOST / "summary.json")
    for task_id in _task_ids(job):
        lora = job / "model" / task_id / "pytorch_lora_weights.safetensors"
        if not lora.is_file() or lora.stat().st_size == 0:
            raise CheckFailed(f"{lora} is missing or empty")
        _json(job / "model" / task_id / "manifest.json")
        status = _json(job / "checkpoints" / task_id / "status.json")
        if status.get("state") != "completed":
            raise CheckFailed(f"{job}/checkpoints/{task_id}/status.json: state {status.get('state')!r}, "
                              f"expected 'completed' (error: {status.get('error')})")
        if not (job / "checkpoints" / task_id / "final.json").is_file():
            raise CheckFailed(f"{job}/checkpoints/{task_id}/final.json is missing (no copy kept for restarts)")
    if (job / "output" / "failure").exists():
        raise CheckFailed(f"{job}/output/failure exists: {(job / 'output' / 'failure').read_text()}")
    owners = {p.stat().st_uid for p in (job / "model").rglob("*")}
    if 0 in owners:
        raise CheckFailed(f"files under {job}/model belong to root: the container ran as root")
    outcomes = {t["task_id"]: t["outcome"] for t in summary.get("tasks", [])}
    if set(outcomes) != set(_task_ids(job)) or set(outcomes.values()) != {"completed"}:
        raise CheckFailed(f"{job}/output/data/{HOST}/summary.json: outcomes {outcomes}, expected all completed")
    return f"{len(outcomes)} tasks completed (model/, checkpoints/, summary.json), files owned by uid {owners}"


def check_stopped(job: Path) -> str:
    task_id = _task_ids(job)[0]
    status = _json(job / "checkpoints" / task_id / "status.json")
    if status.get("state") != "interrupted":
        raise CheckFailed(f"{job}/checkpoints/{task_id}/status.json: state {status.get('state')!r}, "
                          "expected 'interrupted' after SIGTERM")
    states = sorted((job / "checkpoints" / task_id / "state").glob("*"))
    if not states:
        raise CheckFailed(f"{job}/checkpoints/{task_id}/state/ is empty: no resume state saved")
    failure = job / "output" / "failure"
    if not failure.is_file():
        raise CheckFailed(f"{failure} is missing after SIGTERM")
    return f"{task_id} interrupted at step {status.get('step')}, resume state {states[-1].name}"


PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s#;]+)")


def _pins(text: str) -> dict[str, str]:
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731 (PEP 503 names)
    return {norm(m.group(1)): m.group(2) for m in map(PIN.match, text.splitlines()) if m}


def check_image_lock(freeze: Path) -> str:
    """Every package of requirements/image.lock is in the image at its locked version."""
    installed = _pins(freeze.read_text())
    wrong = {n: (v, installed.get(n)) for n, v in _pins((ROOT / "requirements" / "image.lock").read_text()).items()
             if installed.get(n) != v}
    if wrong:
        raise CheckFailed(f"the image differs from requirements/image.lock (locked, installed): {wrong}")
    return f"{len(installed)} packages in the image, every locked one at its locked version"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("make", "check-done", "check-stopped", "check-image-lock"))
    p.add_argument("path", type=Path, help="the job folder (or, for check-image-lock, `pip freeze` output)")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--model-cache", type=Path, default=ROOT / "build" / "image-test" / "tiny-model")
    a = p.parse_args(argv)
    try:
        if a.what == "make":
            make_job(a.path, tasks=a.tasks, steps=a.steps, model_cache=a.model_cache)
            print(f"wrote {a.path}: {a.tasks} tasks, {a.steps} steps, host {HOST}")
        else:
            check = {"check-done": check_done, "check-stopped": check_stopped,
                     "check-image-lock": check_image_lock}[a.what]
            print(f"ok: {check(a.path)}")
    except CheckFailed as exc:
        print(f"image-test check failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
