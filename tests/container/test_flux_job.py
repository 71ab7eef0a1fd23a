"""FLUX.1 (on an NF4-quantized base) and FLUX.2 klein Base jobs through `fanout local` and the real
container: two tasks on one host share one base load (quantized once), and the second task's
LoRA is bit-identical to the same task trained alone on a fresh host. What the job leaves unset
comes from the family's recipe, the same on every task, and the manifest says which."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opt_ml import ROOT, TINY_HP, container_env, make_tree, raw_encode, run_local_job

pytestmark = pytest.mark.slow

JOBS = {
    # FLUX.1's kohya copy has its own test (diffusers' converter only knows full-size single blocks).
    "flux": {**TINY_HP, "export": "lora", "base_quantization": "nf4", "lora_alpha": 8,
             "weighting_scheme": "logit_normal"},
    "flux2-klein": {**TINY_HP, "export": "lora,kohya", "lora_alpha": 8},
}
TASKS = [
    {"task_id": "f-alice", "instance_data": "alice", "instance_prompt": "a photo of sks toy"},
    {"task_id": "f-bob", "instance_data": "bob", "instance_prompt": "a photo of zwx toy"},
]


@pytest.fixture(scope="module", params=sorted(JOBS))
def job(request, tmp_path_factory, tiny_flow_models, image_root):
    family = request.param
    job = run_local_job(tmp_path_factory.mktemp(f"{family}-job"), TASKS, model=tiny_flow_models[family], images=image_root,
                        hyperparameters=JOBS[family])
    return {**job, "family": family, "summary": job["summaries"]["algo-1"], "model": tiny_flow_models[family]}


def test_two_tasks_share_one_base_load_and_the_second_trains_as_if_alone(job, tmp_path, image_root):
    from safetensors.torch import load_file

    family, summary = job["family"], job["summary"]
    assert job["codes"] == {"algo-1": 0}
    assert summary["base_model_loads"] == 1, "the (quantized) base is loaded once per host"
    assert [t["outcome"] for t in summary["tasks"]] == ["completed", "completed"], [t.get("error") for t in summary["tasks"]]
    for task_id in summary["share"]:
        model = job["W"] / "s3" / "model" / task_id
        manifest = json.loads((model / "manifest.json").read_text())
        assert manifest["family"] == family and all(f["status"] == "ok" for f in manifest["formats"].values())
        assert manifest["hyperparameters"]["config"]["base_quantization"] == JOBS[family].get("base_quantization",
                                                                                               "none")
        recipe = manifest["hyperparameters"]["recipe"]  # the job sets no rank: the recipe's, named as such
        assert recipe["variant"] == {"flux": "dev", "flux2-klein": "base"}[family]
        assert manifest["lora"]["rank"] == recipe["from_recipe"]["rank"] == {"flux": 16, "flux2-klein": 32}[family]
        assert {"max_train_steps", "resolution"} <= set(recipe["set_by_task_or_job"])
    second = summary["share"][1]
    task = next(t for t in TASKS if t["task_id"] == second)
    hp = raw_encode({k: str(v) for k, v in JOBS[family].items()})
    base = make_tree(tmp_path / "ml", tasks=[task], hyperparameters=hp, model=job["model"], images=image_root)
    env = {**container_env(base), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "container"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    alone = load_file(base / "model" / second / "pytorch_lora_weights.safetensors")
    in_job = load_file(job["W"] / "s3" / "model" / second / "pytorch_lora_weights.safetensors")
    assert alone.keys() == in_job.keys() and {k.split(".")[0] for k in alone} == {"transformer"}
    for name in alone:
        assert (alone[name] == in_job[name]).all(), f"{family} {second}: {name} differs"
