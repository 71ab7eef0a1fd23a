"""The operator CLI: validate, plan, submit (twice), status, bootstrap, local wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from fanout.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def task_file(tmp_path):
    rows = [{"task_id": "dog", "instance_data": "dog", "instance_prompt": "a photo of sks dog", "class_prompt": "a dog"},
            {"task_id": "cat", "instance_data": "cat", "instance_prompt": "a photo of sks cat",
             "hyperparameters": {"max_train_steps": 1200}},
            {"task_id": "owl", "instance_data": "owl", "instance_prompt": "a photo of sks owl"}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_reports_every_problem_and_exits_2(tmp_path, capsys, task_file):
    assert run(capsys, "validate", task_file)[:2] == (0, f"{task_file}: 3 task(s) OK\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "a/b", "instance_data": "x", "instance_prompt": "p"}\n{"task_id": "c", "host": -1}\n')
    code, out, err = run(capsys, "validate", bad)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"{bad}:2: task 'c' field 'instance_data' is required (a non-empty string)"
    assert any(line.startswith(f"{bad}:1: task 'a/b' field 'task_id' must match") for line in lines)
    assert any("field 'host' must be a non-negative integer" in line for line in lines)
    assert lines[-1] == f"{bad}: 4 problem(s)"


def test_plan_table_and_json(capsys, task_file):
    code, out, _ = run(capsys, "plan", task_file, "--instances", 2)
    assert code == 0 and "makespan" in out and "lower bound" in out and "utilisation" in out
    code, out, _ = run(capsys, "plan", task_file, "--instances", 2, "--json")
    doc = json.loads(out)
    assert set(doc) == {"hosts", "costs", "makespan", "lower_bound", "slots_per_host", "family"}
    assert doc["hosts"][0] == {"index": 0, "tasks": ["cat"], "cost": doc["costs"]["cat"], "slots": [["cat"]],
                               "makespan": doc["costs"]["cat"]}
    assert sorted(t for h in doc["hosts"] for t in h["tasks"]) == ["cat", "dog", "owl"]
    code, out, _ = run(capsys, "plan", task_file, "-k", 5)
    assert "2 host(s) get no task but are billed" in out


def test_errors_are_one_line_with_exit_status_2(capsys, task_file, tmp_path):
    code, out, err = run(capsys, "plan", task_file, "--instances", 0)
    assert code == 2 and err.count("\n") == 1 and "instances must be a positive integer" in err
    code, _, err = run(capsys, "plan", tmp_path / "missing.jsonl", "-k", 2)
    assert code == 2 and "cannot read the task list" in err and err.count("\n") == 1


SUBMIT = ["--image", "123.dkr.ecr.us-east-1.amazonaws.com/lora:1", "--role", "arn:aws:iam::123456789012:role/sm",
          "--model-uri", "s3://ops/base/sd15", "--images-uri", "s3://ops/images", "--output-uri", "s3://ops/jobs"]


def test_submit_dry_run_prints_the_request_and_touches_nothing(capsys, task_file, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")        # would fail if contacted
    code, out, _ = run(capsys, "submit", task_file, "-k", 2, *SUBMIT, "--spot", "--hp", "max_train_steps=600", "--dry-run")
    request = json.loads(out)
    assert code == 0 and request["ResourceConfig"]["InstanceCount"] == 2
    assert request["HyperParameters"] == {"max_train_steps": "600"} and request["EnableManagedSpotTraining"]


@pytest.fixture
def ops_bucket(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ops")
    for folder in ("dog", "cat", "owl", "someone-else"):
        for i in range(2):
            s3.put_object(Bucket="ops", Key=f"images/{folder}/{i}.jpg", Body=b"jpg")
    # submit learns the family (costs, GPU-memory fit) from the base's model_index.json
    s3.put_object(Bucket="ops", Key="base/sd15/model_index.json", Body=b'{"_class_name": "StableDiffusionPipeline"}')
    return s3


def test_submit_twice_creates_one_job(capsys, task_file, ops_bucket):
    code, out, err = run(capsys, "submit", task_file, "-k", 2, *SUBMIT)
    assert code == 0, err
    name = out.strip()
    code, again, err = run(capsys, "submit", task_file, "-k", 2, *SUBMIT)
    assert code == 0 and again.strip() == name and "already exists for this batch" in err
    jobs = boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in jobs] == [name]
    uploaded = ops_bucket.get_object(Bucket="ops", Key=f"jobs/{name}/input/tasks/tasks.jsonl")["Body"].read().decode()
    assert sorted((json.loads(line)["task_id"], json.loads(line)["host"]) for line in uploaded.splitlines()) == \
        [("cat", 0), ("dog", 1), ("owl", 1)]
    manifest = json.loads(ops_bucket.get_object(Bucket="ops", Key=f"jobs/{name}/input/images.manifest")["Body"].read())
    assert manifest[0] == {"prefix": "s3://ops/images/"}
    assert sorted({k.split("/")[0] for k in manifest[1:]}) == ["cat", "dog", "owl"]     # not someone-else
    # another batch under the same explicit name is refused, and its task list is not written
    other = task_file.parent / "other.jsonl"
    other.write_text(task_file.read_text().splitlines()[0] + "\n")
    code, _, err = run(capsys, "submit", other, "-k", 1, *SUBMIT, "--job-name", name)
    assert code == 2 and "is taken by a job that is not this batch" in err
    assert ops_bucket.get_object(Bucket="ops", Key=f"jobs/{name}/input/tasks/tasks.jsonl")["Body"].read().decode() == uploaded


def test_submit_refuses_a_task_without_images(capsys, task_file, ops_bucket):
    ops_bucket.delete_object(Bucket="ops", Key="images/owl/0.jpg")
    ops_bucket.delete_object(Bucket="ops", Key="images/owl/1.jpg")
    code, _, err = run(capsys, "submit", task_file, "-k", 2, *SUBMIT)
    assert code == 2 and "no images under s3://ops/images/<folder>/ for task(s) 'owl'" in err


def test_status_shows_each_task_from_its_status_file(capsys, task_file, ops_bucket):
    name = run(capsys, "submit", task_file, "-k", 2, *SUBMIT)[1].strip()
    quality = {"verdict": "failed_quality", "reasons": ["subject DINO 0.41 < 0.55"], "scores": {"dino": 0.41}}
    ops_bucket.put_object(Bucket="ops", Key=f"jobs/{name}/checkpoints/dog/status.json",
                          Body=json.dumps({"state": "completed", "step": 400, "loss": 0.0812, "host": 1,
                                           "quality": quality}).encode())
    ops_bucket.put_object(Bucket="ops", Key=f"jobs/{name}/checkpoints/cat/status.json",
                          Body=json.dumps({"state": "failed", "step": 12, "host": 0, "error": "CUDA out of memory"}).encode())
    code, out, _ = run(capsys, "status", name, "--json")
    info = json.loads(out)
    assert code == 0 and info["state"] == "Completed"
    rows = {r["task_id"]: r for r in info["tasks"]}
    assert (rows["dog"]["state"], rows["cat"]["state"], rows["owl"]["state"]) == ("completed", "failed", "pending")
    assert rows["cat"]["error"] == "CUDA out of memory"
    assert (rows["dog"]["verdict"], rows["cat"]["verdict"], rows["owl"]["verdict"]) == ("failed_quality", None, None)
    code, out, _ = run(capsys, "status", name)
    assert "0.0812" in out and "CUDA out of memory" in out and "owl" in out
    assert "failed_quality" in next(line for line in out.splitlines() if line.startswith("dog"))


def test_bootstrap_creates_then_finds(capsys, aws_env, monkeypatch):
    monkeypatch.setenv("FANOUT_BUCKET", "boot-bucket")
    code, out, _ = run(capsys, "bootstrap")
    assert code == 0 and out.splitlines() == ["s3://boot-bucket: created", "dynamodb:fanout-requests: created",
                                              "dynamodb:fanout-models: created"]
    assert run(capsys, "bootstrap")[1].count("exists") == 3
    monkeypatch.delenv("FANOUT_BUCKET")
    code, _, err = run(capsys, "bootstrap")
    assert code == 2 and "FANOUT_BUCKET" in err


def test_local_subcommand_without_the_emulator_says_so(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fanout.local", None)     # as if fanout/local.py were absent
    code, _, err = run(capsys, "local", "--anything")
    assert code == 2 and "`fanout local` is not available" in err


def test_python_dash_m_fanout_runs(task_file):
    proc = subprocess.run([sys.executable, "-m", "fanout", "plan", str(task_file), "-k", "2", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["makespan"] > 0


def test_hyperparameter_typos_are_caught_before_anything_is_paid_for(tmp_path, capsys, task_file, monkeypatch):
    rows = [{"task_id": "dog", "instance_data": "dog", "instance_prompt": "a photo of sks dog",
             "hyperparameters": {"max_train_step": 800, "on_task_failure": "fail"}}]
    typo = tmp_path / "typo.jsonl"
    typo.write_text(json.dumps(rows[0]) + "\n")
    code, _, err = run(capsys, "validate", typo)
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith(f"{typo}:1: task 'dog' field 'hyperparameters': unknown name(s) max_train_step, on_task_failure")
    assert "on_task_failure is job-wide" in first and "max_train_steps" in first   # says what is valid

    code, _, err = run(capsys, "validate", task_file, "--hp", "learning_rat=1e-4")
    assert code == 2 and "--hp: unknown name(s) learning_rat; valid:" in err
    assert run(capsys, "validate", task_file, "--hp", "on_task_failure=fail", "--hp", "sagemaker_region=x")[0] == 0

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")        # nothing may be contacted
    code, out, err = run(capsys, "submit", task_file, "-k", 2, *SUBMIT, "--hp", "max_train_step=600", "--dry-run")
    assert code == 2 and out == "" and "unknown name(s) max_train_step" in err


def test_bad_hyperparameter_values_are_caught_by_validate_and_submit(tmp_path, capsys, task_file, monkeypatch):
    rows = [{"task_id": "dog", "instance_data": "dog", "instance_prompt": "a photo of sks dog",
             "hyperparameters": {"resolution": 500, "mixed_precision": "fp8"}},
            {"task_id": "cat", "instance_data": "cat", "instance_prompt": "a photo of sks cat"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, "validate", bad)
    assert code == 2
    assert f"{bad}:1: task 'dog' field 'hyperparameters': mixed_precision: 'fp8' is not one of no, fp16, bf16" in err
    assert f"{bad}:1: task 'dog' field 'hyperparameters': resolution: must be a multiple of 8, got 500" in err
    assert "'cat'" not in err and "2 problem(s)" in err

    code, _, err = run(capsys, "validate", task_file, "--hp", "learning_rate=fast", "--hp", "export=lora,tensorrt")
    assert code == 2 and "--hp: learning_rate: 'fast' is not a number" in err
    assert "--hp: export: unknown format(s) tensorrt; valid: lora, kohya" in err
    assert run(capsys, "validate", task_file, "--hp", "learning_rate=1e-4", "--hp", "export=lora,kohya")[0] == 0

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")        # nothing may be contacted
    code, out, err = run(capsys, "submit", task_file, "-k", 2, *SUBMIT, "--hp", "max_train_steps=-5", "--dry-run")
    assert code == 2 and out == "" and "max_train_steps: must be at least 1, got -5" in err


def test_submit_sends_the_eval_channel_and_validate_checks_the_quality_gate(capsys, task_file, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")        # nothing may be contacted
    code, out, _ = run(capsys, "submit", task_file, "-k", 2, *SUBMIT, "--eval-uri", "s3://ops/scorers",
                       "--hp", 'quality_gate={"dino": 0.55, "copying": 0.95}', "--hp", "on_quality_fail=retry",
                       "--dry-run")
    request = json.loads(out)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert code == 0 and channels["eval"] == "s3://ops/scorers/"
    assert json.loads(request["HyperParameters"]["quality_gate"]) == {"dino": 0.55, "copying": 0.95}
    assert request["HyperParameters"]["on_quality_fail"] == "retry"

    code, _, err = run(capsys, "validate", task_file, "--hp", 'quality_gate={"sharpness": 0.5}')
    assert code == 2 and ("--hp: quality_gate: unknown score(s) sharpness; valid: dino, clip_i, clip_t, drift, "
                          "copying, identity") in err
    code, _, err = run(capsys, "validate", task_file, "--hp", "on_quality_fail=retrain")
    assert code == 2 and "on_quality_fail: 'retrain' is not one of keep, retry" in err
    code, _, err = run(capsys, "submit", task_file, "-k", 2, *SUBMIT, "--eval-uri", "/local/scorers", "--dry-run")
    assert code == 2 and "eval_uri must be an s3:// URI" in err
