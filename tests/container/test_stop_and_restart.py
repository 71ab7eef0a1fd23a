"""Stops and restarts with the real pipeline: SIGTERM saves state; kill -9 then restart delivers all.

SageMaker sends SIGTERM on StopTrainingJob and on a spot interruption notice, then SIGKILL.
A managed spot restart gives every host a fresh instance with the whole checkpoint prefix
restored; `fanout local` on the same workdir does the same.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from opt_ml import RESTART_STEPS, RESTART_TASKS, ROOT, TINY_HP, container_env, make_tree, sdk_encode, wait_for

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
            wait_for(lambda: "task=long step=3/" in log.read_text(), 300, "step 3 of the task", proc)
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
    page = (base / "checkpoints/long/report.html").read_text()   # written as the task ended, whatever its state
    assert "task long: interrupted" in page and "stop requested" in page
    state = base / "checkpoints/long/state" / f"step-{status['step']:06d}"
    assert (state / "meta.json").is_file() and (state / "lora.safetensors").is_file()
    summary = json.loads((base / "output/data/algo-1/summary.json").read_text())
    assert [t["outcome"] for t in summary["tasks"]] == ["interrupted", "not_started"]
    assert "SIGTERM" in (base / "output/failure").read_text()


def test_kill_9_of_the_whole_job_then_restart_retrains_nothing_completed_and_delivers_all(restarted_job):
    work, done, started = restarted_job["work"], restarted_job["done"], restarted_job["started"]
    assert restarted_job["returncode"] == 0, restarted_job["output"][-3000:]
    assert "restart: restoring" in restarted_job["output"]

    outcomes = {t["task_id"]: t["outcome"] for p in (work / "s3/output").glob("*/summary.json")
                for t in json.loads(p.read_text())["tasks"]}
    assert set(outcomes) == set(RESTART_TASKS)
    for task_id in done:  # delivered before the kill: returned, not retrained
        assert outcomes[task_id] == "restored"
        assert (json.loads((work / "s3/checkpoints" / task_id / "status.json").read_text())["attempts"]
                == restarted_job["attempts_before"][task_id])
    assert outcomes["t5"] == "failed"  # its images were never uploaded: it fails alone
    assert all(outcomes[t] == "completed" for t in set(RESTART_TASKS) - done - {"t5"})
    logs = "".join(p.read_text() for p in (work / "logs").glob("*.log"))
    for task_id in started:  # interrupted mid-training: continued from its saved state
        assert f"task={task_id} resumed from" in logs
    for task_id in set(RESTART_TASKS) - {"t5"}:
        assert (work / "s3/model" / task_id / "pytorch_lora_weights.safetensors").stat().st_size > 0
        status = json.loads((work / "s3/checkpoints" / task_id / "status.json").read_text())
        assert status["step"] == RESTART_STEPS[task_id]
