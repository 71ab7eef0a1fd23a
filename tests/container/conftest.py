"""Fixtures of the container tests; the tree helpers live in opt_ml.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from opt_ml import RESTART_STEPS, RESTART_TASKS, TINY_HP, load_script, s3_state, start_fanout_local, wait_for


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """The images channel: one folder of subject images per user, plus a corrupt one."""
    demo = load_script("make_demo_data")
    root = tmp_path_factory.mktemp("images")
    for i, user in enumerate(("alice", "bob", "carol", "dave", "erin")):
        demo.make_demo_data(root / "tmp" / user, count=2, size=40, seed=i)
        (root / "tmp" / user / "instance").rename(root / user)
    (root / "broken").mkdir()
    (root / "broken" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def moto_s3():
    """A moto server on 127.0.0.1 (real HTTP, boto3's real serialization); yields its endpoint URL."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def restarted_job(tmp_path_factory, tiny_model, image_root) -> dict:
    """A real 2-host `fanout local` job killed with kill -9 mid-way, then run again on the same
    workdir (a spot restart). test_stop_and_restart.py checks what it delivered; the report
    tests open its pages. Returns the workdir, what the kill caught, and the restart's output."""
    import json
    import os
    import signal

    tmp_path = tmp_path_factory.mktemp("restarted-job")
    hp = {**TINY_HP, "max_train_steps": 8, "checkpoint_every": 2, "preview_every": 4, "export": "lora"}
    lines = [{"task_id": t, "instance_data": u, "instance_prompt": "a sks toy", "user_id": f"user-{t}"}
             for t, u in RESTART_TASKS.items()]
    lines[1]["hyperparameters"] = {"max_train_steps": RESTART_STEPS["t2"]}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    work = tmp_path / "W"
    first = start_fanout_local(work, tasks, tiny_model, image_root, hp)
    try:
        done, started = wait_for(lambda: (lambda d, s: (d, s) if d and s else None)(*s3_state(work)), 400,
                                 "one task delivered and another mid-training", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    attempts = {t: json.loads((work / "s3/checkpoints" / t / "status.json").read_text())["attempts"] for t in done}
    again = start_fanout_local(work, tasks, tiny_model, image_root, hp)
    out, _ = again.communicate(timeout=500)
    return {"work": work, "done": done, "started": started, "attempts_before": attempts,
            "returncode": again.returncode, "output": out.decode()}
