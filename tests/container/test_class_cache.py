"""Prior preservation on a warm host: class images are generated once and reused by the other
tasks, also by a task that starts at the same moment on the host's other slot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opt_ml import ROOT, TINY_HP, container_env, make_tree, sdk_encode

pytestmark = pytest.mark.slow


def test_generated_class_images_are_shared_by_the_tasks_of_a_host_and_kept_for_restarts(tmp_path, tiny_model, image_root):
    # Two slots: both tasks want the same class images at once; one generates, the other waits and reuses.
    hp = {**TINY_HP, "max_train_steps": 2, "export": "lora", "num_class_images": 2, "class_inference_steps": 1,
          "gpus_per_host": 2}
    tasks = [{"task_id": t, "instance_data": u, "instance_prompt": "a photo of sks toy", "class_prompt": "a photo of a toy"}
             for t, u in (("first", "alice"), ("second", "bob"))]
    base = make_tree(tmp_path / "ml", tasks=tasks, hyperparameters=sdk_encode(hp), model=tiny_model, images=image_root)
    proc = subprocess.run([sys.executable, "-m", "container"], env=container_env(base), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("class images: generating") == 1
    assert proc.stdout.count("class images: reusing") == 1
    cache = base / "checkpoints" / "_class-cache" / "algo-1"
    assert len(list(cache.glob("*/class-*.png"))) == 2  # in the checkpoint prefix: a restart gets it back
    slots = set()
    for task_id in ("first", "second"):
        status = json.loads((base / "checkpoints" / task_id / "status.json").read_text())
        assert status["state"] == "completed"
        slots.add(status["slot"])
    assert slots == {0, 1}
