"""Stops and restarts with the real pipeline: SIGTERM saves state; kill -9 then restart delivers all.

SageMaker sends SIGTERM on StopTrainingJob and on a spot interruption notice, then SIGKILL.
A managed spot restart gives every host a fresh instance with the whole checkpoint prefix
restored; `fanout local` on the same workdir does the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opt_ml import ROOT, TINY_HP, container_env, make_tree, sdk_encode
from opt_ml import wait_for as _wait_for

pytestmark = pytest.mark.slow


def test_sigterm_saves_state_marks_the_task_and_exits_promptly(tmp_path, tiny_model, image_root):
    hp = {**TINY_HP, "max_train_steps": 1000, "checkpoint_every": 0, "export": "lora"}
    base = make_tree(tmp_path / "ml", tasks=[{"task_id": "long", "instance_data": "alice", "instance_prompt": "a sks toy"},
                                             {"task_id": "next", "instance_data": "bob", "instance_prompt": "a sks toy"}],
                     hyperparameters=sdk_encode(hp), model=tiny_model, images=image_root)
    log = tmp_path / "host.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "container"], env=container_env(base), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: "task=long step=3/" in log.read_text(), 300, "step 3 of the task", proc)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 143, log.read_text()[-3000:]
    assert time.monotonic() - sent < 30  # well inside SageMaker's 120 s before SIGKILL
    status = json.loads((base / "checkpoints/long/status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] >= 3
    state = base / "checkpoints/long/state" / f"step-{status['step']:06d}"
    assert (state / "meta.json").is_file() and (state / "lora.safetensors").is_file()
    summary = json.loads((base / "output/data/algo-1/summary.json").read_text())
    assert [t["outcome"] for t in summary["tasks"]] == ["interrupted", "not_started"]
    assert "SIGTERM" in (base / "output/failure").read_text()


def _fanout_local(work: Path, tasks: Path, model: Path, images: Path, hp: dict) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fanout.local", "--tasks", str(tasks), "--model", str(model), "--images", str(images),
           "--instances", "2", "--workdir", str(work), "--hyperparameters", json.dumps(hp), "--quiet",
           "--sync-interval", "0.3"]
    # Its own process group, so the test can kill the whole job like a lost instance fleet.
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _s3_state(work: Path) -> tuple[set[str], set[str]]:
    """(tasks delivered, tasks with a resume state but not done) as the shared prefix shows them."""
    done, started = set(), set()
    for folder in (work / "s3" / "checkpoints").glob("t*"):
        try:
            status = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if status.get("state") == "completed" and (folder / "final.json").exists():
            done.add(folder.name)
        elif list(folder.glob("state/step-*/meta.json")):
            started.add(folder.name)
    return done, started


def test_kill_9_of_the_whole_job_then_restart_retrains_nothing_completed_and_delivers_all(
        tmp_path, tiny_model, image_root):
    hp = {**TINY_HP, "max_train_steps": 8, "checkpoint_every": 2, "export": "lora"}
    ids = ["t1", "t2", "t3", "t4"]
    users = ["alice", "bob", "carol", "dave"]
    lines = [{"task_id": t, "instance_data": u, "instance_prompt": "a sks toy"} for t, u in zip(ids, users)]
    # t2 is long and goes first on its host, so a short task on the other host is delivered
    # while t2 is still mid-training, however fast the machine: the kill catches both kinds.
    lines[1]["hyperparameters"] = {"max_train_steps": 30}
    steps = {"t1": 8, "t2": 30, "t3": 8, "t4": 8}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    work = tmp_path / "W"
    first = _fanout_local(work, tasks, tiny_model, image_root, hp)
    try:
        done, started = _wait_for(lambda: (lambda d, s: (d, s) if d and s else None)(*_s3_state(work)), 400,
                                  "one task delivered and another mid-training", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    attempts_before = {t: json.loads((work / "s3/checkpoints" / t / "status.json").read_text())["attempts"] for t in done}

    again = _fanout_local(work, tasks, tiny_model, image_root, hp)
    out, _ = again.communicate(timeout=500)
    assert again.returncode == 0, out.decode()[-3000:]
    assert b"restart: restoring" in out

    outcomes = {t["task_id"]: t["outcome"] for p in (work / "s3/output").glob("*/summary.json")
                for t in json.loads(p.read_text())["tasks"]}
    assert set(outcomes) == set(ids)
    for task_id in done:  # delivered before the kill: returned, not retrained
        assert outcomes[task_id] == "restored"
        assert json.loads((work / "s3/checkpoints" / task_id / "status.json").read_text())["attempts"] == attempts_before[task_id]
    assert all(outcomes[t] == "completed" for t in set(ids) - done)
    logs = "".join(p.read_text() for p in (work / "logs").glob("*.log"))
    for task_id in started:  # interrupted mid-training: continued from its saved state
        assert f"task={task_id} resumed from" in logs
    for task_id in ids:
        assert (work / "s3/model" / task_id / "pytorch_lora_weights.safetensors").stat().st_size > 0
        assert json.loads((work / "s3/checkpoints" / task_id / "status.json").read_text())["step"] == steps[task_id]
