"""An emulated 3-host job with the real tiny pipeline: sharding, warm worker, failures, outputs.

One job (module fixture) is shared by every test here: six tasks on three hosts, one with a
corrupt image, one with a missing folder, one with a prompt that looks like a number, one
delivered to an S3 output_uri (a moto server), all scored by the tiny scorer models of the
`eval` channel (one with a quality gate it cannot pass). The isolation test trains one of its tasks
again, alone, and compares the LoRA.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fanout.metrics import LOG_LINE_PATTERN, read_metrics
from opt_ml import ROOT, TINY_HP, container_env, make_tree, raw_encode, run_local_job

pytestmark = pytest.mark.slow

HP = {**TINY_HP, "export": "lora", "eval_inference_steps": 2}
TASKS = [
    {"task_id": "t-alice", "instance_data": "alice", "instance_prompt": "a photo of sks toy",
     "output_uri": "s3://deliveries/users/alice/"},
    {"task_id": "t-bob", "instance_data": "bob", "instance_prompt": "a photo of sks toy",
     "hyperparameters": {"quality_gate": {"dino": 1.0}}},   # only a copied photo reaches 1.0
    {"task_id": "t-carol", "instance_data": "carol", "instance_prompt": "a photo of sks toy"},
    {"task_id": "t-123", "instance_data": "dave", "instance_prompt": "123", "user_id": "u-123",
     "metadata": {"order": 42}},
    {"task_id": "t-broken", "instance_data": "broken", "instance_prompt": "a photo of sks toy"},
    {"task_id": "t-missing", "instance_data": "nobody", "instance_prompt": "a photo of sks toy"},
]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model, image_root, moto_s3, tiny_scorers):
    import boto3

    boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1").create_bucket(Bucket="deliveries")
    # AWS_ENDPOINT_URL is inherited by the hosts: uploads go to moto.
    job = run_local_job(tmp_path_factory.mktemp("job3"), TASKS, model=tiny_model, images=image_root,
                        hyperparameters=HP, instances=3, env={"AWS_ENDPOINT_URL": moto_s3},
                        eval_models=tiny_scorers)
    return {**job, "endpoint": moto_s3}


def _status(job, task_id):
    return json.loads((job["W"] / "s3" / "checkpoints" / task_id / "status.json").read_text())


def test_every_host_exits_0_when_failed_tasks_have_recorded_reasons(job):
    assert job["codes"] == {"algo-1": 0, "algo-2": 0, "algo-3": 0}


def test_shares_are_disjoint_and_cover_the_task_list(job):
    shares = [set(s["share"]) for s in job["summaries"].values()]
    assert len(shares) == 3 and all(shares)
    assert set().union(*shares) == {t["task_id"] for t in TASKS}
    assert sum(len(s) for s in shares) == len(TASKS)


def test_the_base_model_is_loaded_once_per_host(job):
    assert {h: s["base_model_loads"] for h, s in job["summaries"].items()} == {"algo-1": 1, "algo-2": 1, "algo-3": 1}


def test_a_corrupt_image_and_a_missing_folder_fail_only_their_tasks_with_reasons_naming_them(job):
    broken, missing = _status(job, "t-broken"), _status(job, "t-missing")
    assert broken["state"] == "failed" and "photo.png" in broken["error"]
    assert missing["state"] == "failed" and "nobody" in missing["error"]
    for task_id in ("t-alice", "t-bob", "t-carol", "t-123"):
        assert _status(job, task_id)["state"] == "completed", task_id
    outcomes = {t["task_id"]: t for s in job["summaries"].values() for t in s["tasks"]}
    assert "photo.png" in outcomes["t-broken"]["error"] and "nobody" in outcomes["t-missing"]["error"]


def test_every_completed_lora_is_in_the_merged_model_folder(job):
    model = job["W"] / "s3" / "model"
    assert sorted(p.name for p in model.iterdir()) == ["t-123", "t-alice", "t-bob", "t-carol"]
    for task_id in ("t-123", "t-alice", "t-bob", "t-carol"):
        assert (model / task_id / "pytorch_lora_weights.safetensors").stat().st_size > 0
        assert (model / task_id / "manifest.json").exists()
        assert list((job["W"] / "s3" / "checkpoints" / task_id / "previews").glob("step-*/grid.png"))


def test_a_numeric_prompt_stays_a_string_and_user_fields_are_carried(job):
    manifest = json.loads((job["W"] / "s3" / "model" / "t-123" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["config"]["instance_prompt"] == "123"
    assert manifest["user_id"] == "u-123" and manifest["metadata"] == {"order": 42}
    status = _status(job, "t-123")
    assert status["user_id"] == "u-123" and status["metadata"] == {"order": 42} and status["host"].startswith("algo-")


def test_output_uri_receives_the_artifacts(job):
    import boto3

    s3 = boto3.client("s3", endpoint_url=job["endpoint"], region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="deliveries", Prefix="users/alice/")["Contents"]}
    assert {"users/alice/manifest.json", "users/alice/pytorch_lora_weights.safetensors"} <= keys


def test_metric_definitions_read_the_real_log_lines(job):
    last = {}
    for log in (job["W"] / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            if re.match(LOG_LINE_PATTERN, line):  # the per-step lines (a "done" line carries loss= too)
                metrics = read_metrics(line)
                assert {"train:loss", "train:step", "train:lr"} <= set(metrics), line
                last[line.split()[0][len("task="):]] = metrics
    assert set(last) == {"t-alice", "t-bob", "t-carol", "t-123"}
    for task_id, metrics in last.items():
        status = _status(job, task_id)
        assert metrics["train:step"] == HP["max_train_steps"] == status["step"]
        assert metrics["train:loss"] == pytest.approx(status["loss"], abs=1e-5)


def test_a_task_trains_the_same_lora_alone_as_after_another_task_on_its_host(job, tmp_path, tiny_model, image_root):
    from safetensors.torch import load_file

    # The task that ran second on its host, after another task used the same base model.
    host, second = next((h, s["share"][1]) for h, s in sorted(job["summaries"].items())
                        if len(s["share"]) > 1 and s["tasks"][0]["outcome"] == "completed"
                        and s["tasks"][1]["outcome"] == "completed")
    task = next(t for t in TASKS if t["task_id"] == second)
    # Alone on a fresh host, hyperparameters in the raw API encoding this time (the job used the SDK's).
    base = make_tree(tmp_path / "ml", tasks=[{k: v for k, v in task.items() if k != "output_uri"}],
                     hyperparameters=raw_encode({k: str(v) for k, v in HP.items()}), model=tiny_model, images=image_root)
    # The job's hosts ran one thread each (fanout local splits 2 cores over 3 hosts); the same
    # here, so float sums run in the same order and "the same LoRA" can mean bit-identical.
    env = {**container_env(base), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "container"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    alone = load_file(base / "model" / second / "pytorch_lora_weights.safetensors")
    in_job = load_file(job["W"] / "s3" / "model" / second / "pytorch_lora_weights.safetensors")
    assert alone.keys() == in_job.keys() and alone
    for name in alone:
        assert (alone[name] == in_job[name]).all(), f"{second} on {host}: {name} differs"


def test_every_task_ends_with_its_verdict_in_manifest_status_and_summary(job):
    """passed (report-only: no gate), failed_quality (its own gate), not_evaluated (failed tasks)."""
    outcomes = {t["task_id"]: t for s in job["summaries"].values() for t in s["tasks"]}
    want = {"t-alice": "passed", "t-bob": "failed_quality", "t-carol": "passed", "t-123": "passed",
            "t-broken": "not_evaluated", "t-missing": "not_evaluated"}
    assert {tid: t["verdict"] for tid, t in outcomes.items()} == want
    for task_id in ("t-alice", "t-bob", "t-carol", "t-123"):
        manifest = json.loads((job["W"] / "s3" / "model" / task_id / "manifest.json").read_text())
        quality, status = manifest["quality"], _status(job, task_id)["quality"]
        assert quality["verdict"] == status["verdict"] == want[task_id]
        assert quality["scores"] == status["scores"] and isinstance(quality["scores"]["clip_t"], float)
        # The images' paths are relative to the manifest: from the merged model folder they
        # reach the synced checkpoint prefix, where evaluation/ was uploaded.
        for image in quality["images"]:
            assert (job["W"] / "s3" / "model" / task_id / image["path"]).is_file(), image
    bob = json.loads((job["W"] / "s3" / "model" / "t-bob" / "manifest.json").read_text())["quality"]
    assert bob["reasons"] == [f"subject DINO {bob['scores']['dino']:.2f} < 1.00"]
    assert "failed_quality" in next(log.read_text() for log in (job["W"] / "logs").glob("*.log")
                                     if "task=t-bob quality:" in log.read_text())
