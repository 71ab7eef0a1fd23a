"""Z-Image and Qwen-Image (on an NF4 base) jobs through `fanout local` and the real container: two
users' tasks on one host share one base load (Qwen-Image's transformer quantized once), each
task's files say its family and load back, and the two users get different LoRAs."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from opt_ml import TINY_HP, run_local_job

pytestmark = pytest.mark.slow

# Stated, not left to the families' recipes (1024 px, rank 16, 8-bit AdamW, ...: GPU defaults).
EXPLICIT = {"rank": 4, "optimizer": "adamw", "mixed_precision": "no", "gradient_accumulation_steps": 1,
            "lr_warmup_steps": 0, "gradient_checkpointing": False}
JOBS = {
    "z-image": {**TINY_HP, **EXPLICIT, "export": "lora,kohya", "lora_alpha": 8, "weighting_scheme": "logit_normal"},
    "qwen-image": {**TINY_HP, **EXPLICIT, "export": "lora,kohya", "base_quantization": "nf4", "lora_alpha": 8},
}
TASKS = [
    {"task_id": "u-alice", "instance_data": "alice", "instance_prompt": "a photo of sks toy"},
    {"task_id": "u-bob", "instance_data": "bob", "instance_prompt": "a photo of zwx toy"},
]


@pytest.mark.parametrize("family", sorted(JOBS))
def test_two_tasks_share_one_base_load_and_each_gets_its_own_lora(family, tiny_z_image, tiny_qwen_image, image_root,
                                                                  tmp_path):
    model = {"z-image": tiny_z_image, "qwen-image": tiny_qwen_image}[family]
    job = run_local_job(tmp_path, TASKS, model=model, images=image_root, hyperparameters=JOBS[family])
    summary = job["summaries"]["algo-1"]
    assert job["codes"] == {"algo-1": 0}
    assert summary["base_model_loads"] == 1, "the (quantized) base is loaded once per host"
    assert [t["outcome"] for t in summary["tasks"]] == ["completed", "completed"], [t.get("error") for t in
                                                                                     summary["tasks"]]
    loras = {}
    for task in TASKS:
        model_dir = job["W"] / "s3" / "model" / task["task_id"]
        manifest = json.loads((model_dir / "manifest.json").read_text())
        assert manifest["family"] == family
        assert {n: f["status"] for n, f in manifest["formats"].items()} == {"lora": "ok", "kohya": "ok"}
        assert manifest["hyperparameters"]["config"]["base_quantization"] == JOBS[family].get("base_quantization",
                                                                                               "none")
        loras[task["task_id"]] = load_file(model_dir / "pytorch_lora_weights.safetensors")
    alice, bob = loras["u-alice"], loras["u-bob"]
    assert alice.keys() == bob.keys() and {k.split(".")[0] for k in alice} == {"transformer"}
    assert any(not (alice[k] == bob[k]).all() for k in alice if "lora_B" in k), "two users, two different LoRAs"
