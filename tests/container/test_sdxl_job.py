"""An SDXL job through `fanout local` and the real container: one base load per host, the warm
worker's isolation, a task setting the family cannot use failing alone, and a job-wide one
failing the job before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opt_ml import ROOT, TINY_HP, container_env, make_tree, raw_encode, sdk_encode, run_local_job

HP = {**TINY_HP, "export": "lora,kohya", "train_text_encoder": True, "lora_alpha": 8}
TASKS = [
    {"task_id": "xl-alice", "instance_data": "alice", "instance_prompt": "a photo of sks toy"},
    {"task_id": "xl-bob", "instance_data": "bob", "instance_prompt": "a photo of zwx toy"},
    {"task_id": "xl-mme", "instance_data": "carol", "instance_prompt": "a photo of sks toy",
     "hyperparameters": {"export": "lora,mme"}},
]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_sdxl_model, image_root):
    # Two good tasks and the refused one on one host: the base is shared by both trainings.
    job = run_local_job(tmp_path_factory.mktemp("sdxl-job"), TASKS, model=tiny_sdxl_model, images=image_root,
                        hyperparameters=HP)
    return {**job, "summary": job["summaries"]["algo-1"]}


@pytest.mark.slow
def test_an_sdxl_job_loads_the_base_once_and_a_refused_setting_fails_only_its_task(job):
    assert job["codes"] == {"algo-1": 0}
    summary = job["summary"]
    assert summary["base_model_loads"] == 1
    outcomes = {t["task_id"]: t for t in summary["tasks"]}
    assert outcomes["xl-alice"]["outcome"] == outcomes["xl-bob"]["outcome"] == "completed"
    assert outcomes["xl-mme"]["outcome"] == "failed"
    assert "'mme'" in outcomes["xl-mme"]["error"] and "sdxl" in outcomes["xl-mme"]["error"]
    for task_id in ("xl-alice", "xl-bob"):
        model = job["W"] / "s3" / "model" / task_id
        manifest = json.loads((model / "manifest.json").read_text())
        assert manifest["family"] == "sdxl" and (model / "lora_kohya.safetensors").is_file()


@pytest.mark.slow
def test_an_sdxl_task_trains_the_same_lora_alone_as_after_another_on_the_warm_worker(job, tmp_path, tiny_sdxl_model,
                                                                                  image_root):
    from safetensors.torch import load_file

    first, second = job["summary"]["share"][:2]
    assert job["summary"]["tasks"][0]["outcome"] == "completed"
    task = next(t for t in TASKS if t["task_id"] == second)
    base = make_tree(tmp_path / "ml", tasks=[task], hyperparameters=raw_encode({k: str(v) for k, v in HP.items()}),
                     model=tiny_sdxl_model, images=image_root)
    env = {**container_env(base), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "container"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    alone = load_file(base / "model" / second / "pytorch_lora_weights.safetensors")
    in_job = load_file(job["W"] / "s3" / "model" / second / "pytorch_lora_weights.safetensors")
    assert alone.keys() == in_job.keys() and {k.split(".")[0] for k in alone} == {"unet", "text_encoder",
                                                                                 "text_encoder_2"}
    for name in alone:
        assert (alone[name] == in_job[name]).all(), f"{second} after {first}: {name} differs"


def test_a_job_wide_setting_the_family_cannot_use_fails_the_job_before_any_model_loads(tmp_path, tiny_sdxl_model,
                                                                                       image_root):
    base = make_tree(tmp_path / "ml", tasks=TASKS[:1], hyperparameters=sdk_encode({**HP, "export": "lora,mme"}),
                     model=tiny_sdxl_model, images=image_root)
    proc = subprocess.run([sys.executable, "-m", "container"], env=container_env(base), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    failure = (base / "output" / "failure").read_text()
    assert "hyperparameters.json" in failure and "'mme'" in failure and "sdxl" in failure
    assert "base model loaded" not in proc.stdout
