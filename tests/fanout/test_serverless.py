"""The serverless path against a moto server: upload -> queue -> launch -> job end -> models."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
from fanout_fakes import SageMakerFaults, load_event

from fanout import handlers
from fanout.launcher import RateLimiter
from fanout.service import launch_pending, task_id_for
from fanout.store import COMPLETED, FAILED, LAUNCHED, PENDING


def upload_request(svc, user, request, images=2, **body):
    s3 = svc.objects.s3
    for i in range(images):
        s3.put_object(Bucket=svc.settings.bucket, Key=f"requests/{user}/{request}/images/{i}.jpg", Body=b"jpg")
    body = {"instance_prompt": f"a photo of sks {user}", **body}
    s3.put_object(Bucket=svc.settings.bucket, Key=f"requests/{user}/{request}/request.json", Body=json.dumps(body).encode())
    return load_event("s3_request_uploaded.json", bucket=svc.settings.bucket, user=user, request=request)


def statuses(svc):
    scan = svc.requests.client.scan(TableName=svc.settings.requests_table)["Items"]
    return {i["request_key"]["S"]: i["status"]["S"] for i in scan}


def job_tasks(svc, job_name):
    """Task ids in the task list a job received."""
    body = svc.objects.get_text(f"s3://{svc.settings.bucket}/jobs/{job_name}/input/tasks/tasks.jsonl")
    return [json.loads(line)["task_id"] for line in body.splitlines()]


def all_jobs(svc):
    sm = svc.launcher.sagemaker
    return [j["TrainingJobName"] for j in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]]


def test_upload_event_delivered_three_times_makes_one_request(svc):
    event = upload_request(svc, "u1", "r1", metadata={"plan": "pro"})
    results = [handlers.on_upload(event) for _ in range(3)]
    assert [r["results"]["requests/u1/r1/request.json"] for r in results] == ["created", "duplicate", "duplicate"]
    item = svc.requests.get("u1/r1")
    task = json.loads(item["task"])
    assert item["status"] == PENDING and int(item["retries"]) == 0
    assert task["user_id"] == "u1" and task["metadata"] == {"plan": "pro", "request_id": "r1"}
    assert task["instance_data"] == "u1/r1/images" and task["output_uri"] == "s3://fanout-test/models/u1/r1/"
    # image uploads are not requests
    image = load_event("s3_image_uploaded.json", bucket=svc.settings.bucket, user="u1", request="r1")
    assert handlers.on_upload(image)["results"] == {"requests/u1/r1/images/photo 1.jpg": "ignored"}
    assert len(statuses(svc)) == 1


def test_sqs_batch_reports_only_the_failed_item_and_bad_requests_are_recorded(svc):
    upload_request(svc, "u2", "r1")
    event = load_event("sqs_request_uploaded.json", bucket=svc.settings.bucket, user="u2", request="r1")
    out = handlers.on_upload(event)
    assert out["batchItemFailures"] == [{"itemIdentifier": "msg-missing-object"}]
    assert statuses(svc) == {"u2/r1": PENDING}
    bad = upload_request(svc, "u3", "r9", hyperparameters="not-an-object")
    assert handlers.on_upload(bad)["results"]["requests/u3/r9/request.json"] == "invalid"
    item = svc.requests.get("u3/r9")
    assert item["status"] == FAILED and "field 'hyperparameters' must be a JSON object" in item["reason"]
    typo = upload_request(svc, "u3", "r10", hyperparameters={"max_train_step": 800})
    assert handlers.on_upload(typo)["results"]["requests/u3/r10/request.json"] == "invalid"
    item = svc.requests.get("u3/r10")
    assert item["status"] == FAILED and "unknown name(s) max_train_step" in item["reason"]


def test_launch_pending_launches_one_job_and_records_it(svc):
    for i in range(3):
        handlers.on_upload(upload_request(svc, f"user{i}", "req"))
    out = handlers.launch_pending(load_event("schedule.json"))
    assert out["launched"] == 3 and len(out["jobs"]) == 1
    job = out["jobs"][0]
    assert set(statuses(svc).values()) == {LAUNCHED}
    desc = svc.launcher.sagemaker.describe_training_job(TrainingJobName=job)
    assert desc["ResourceConfig"]["InstanceCount"] == 3          # sized to the backlog, capped at K
    assert sorted(job_tasks(svc, job)) == sorted(task_id_for(f"user{i}", "req") for i in range(3))
    manifest = json.loads(svc.objects.get_text(f"s3://fanout-test/jobs/{job}/input/images.manifest"))
    assert manifest[0] == {"prefix": "s3://fanout-test/requests/"}
    assert len(manifest) == 1 + 6 and all(k.split("/")[0].startswith("user") for k in manifest[1:])
    assert handlers.launch_pending({})["launched"] == 0          # nothing left to launch


def test_a_queued_request_the_checks_now_refuse_fails_alone_and_its_batch_launches(svc):
    for i in range(2):
        handlers.on_upload(upload_request(svc, f"good{i}", "req"))
    # queued under older rules (the upload check did not know this value was bad)
    handlers.on_upload(upload_request(svc, "old", "req"))
    key = "old/req"
    task = json.loads(svc.requests.get(key)["task"])
    svc.requests.client.delete_item(TableName=svc.settings.requests_table, Key={"request_key": {"S": key}})
    svc.requests.put_new("old", "req", {**task, "hyperparameters": {"resolution": 500}}, svc.clock())

    out = handlers.launch_pending(load_event("schedule.json"))
    assert out["launched"] == 2 and out["failed"] == 1 and len(out["jobs"]) == 1
    assert statuses(svc) == {"good0/req": LAUNCHED, "good1/req": LAUNCHED, key: FAILED}
    assert "resolution: must be a multiple of 8, got 500" in svc.requests.get(key)["reason"]
    assert task_id_for("old", "req") not in job_tasks(svc, out["jobs"][0])


def test_two_racing_launchers_put_every_request_in_exactly_one_job(svc):
    for i in range(20):
        upload_request(svc, f"u{i:02d}", "r")
        handlers.on_upload(load_event("s3_request_uploaded.json", bucket="fanout-test", user=f"u{i:02d}", request="r"))
    barrier, outs = threading.Barrier(2), []

    def run(name):
        barrier.wait()
        outs.append(launch_pending(svc, claimer=name))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(o["launched"] for o in outs) == 20 and not any(o["errors"] for o in outs)
    in_jobs = [tid for job in all_jobs(svc) for tid in job_tasks(svc, job)]
    assert sorted(in_jobs) == sorted(task_id_for(f"u{i:02d}", "r") for i in range(20))   # each exactly once
    assert set(statuses(svc).values()) == {LAUNCHED}


def test_throttling_loses_nothing_and_launches_nothing_twice(svc):
    faults = SageMakerFaults(throttle=0.3, seed=7).attach(svc.launcher.sagemaker)
    svc.settings = replace(svc.settings, max_tasks_per_job=2)
    for i in range(16):
        handlers.on_upload(upload_request(svc, f"t{i:02d}", "r", images=1))
    out = launch_pending(svc)
    assert faults.throttled > 0, "the test must actually throttle"
    assert out["launched"] == 16 and out["released"] == 0
    jobs = all_jobs(svc)
    assert len(jobs) == 8 == faults.created
    in_jobs = [tid for job in jobs for tid in job_tasks(svc, job)]
    assert sorted(in_jobs) == sorted(task_id_for(f"t{i:02d}", "r") for i in range(16))


def test_capacity_error_hands_requests_back_with_the_reason(svc):
    SageMakerFaults(limit_exceeded=1).attach(svc.launcher.sagemaker)
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    out = handlers.launch_pending({})
    assert out["released"] == 1 and "ResourceLimitExceeded" in out["errors"][0]
    item = svc.requests.get("u1/r1")
    assert item["status"] == PENDING and "ResourceLimitExceeded" in item["reason"]
    assert handlers.launch_pending({})["launched"] == 1             # capacity came back


def test_request_without_images_fails_with_a_reason_and_does_not_block_others(svc):
    handlers.on_upload(upload_request(svc, "u1", "r1", images=0))
    handlers.on_upload(upload_request(svc, "u2", "r1"))
    out = handlers.launch_pending({})
    assert out["launched"] == 1 and out["failed"] == 1
    assert "no images under s3://fanout-test/requests/u1/r1/images/" in svc.requests.get("u1/r1")["reason"]


def write_status(svc, job, task_id, state, error=None):
    body = {"state": state, "step": 400 if state == "completed" else 37, "loss": 0.1, "error": error}
    svc.objects.put_text(f"s3://fanout-test/jobs/{job}/checkpoints/{task_id}/status.json", json.dumps(body))


def test_job_end_completes_registers_and_retries_each_task(svc):
    for user in ("ok", "bad", "lost"):
        handlers.on_upload(upload_request(svc, user, "r"))
    job = handlers.launch_pending({})["jobs"][0]
    write_status(svc, job, task_id_for("ok", "r"), "completed")
    write_status(svc, job, task_id_for("bad", "r"), "failed", "CUDA out of memory")
    event = load_event("job_state_change.json", bucket="fanout-test", job=job, status="Failed", reason="AlgorithmError")
    first = handlers.on_job_state_change(event)
    again = handlers.on_job_state_change(event)                    # EventBridge delivers twice
    assert (first["completed"], first["PENDING"], again["completed"], again["PENDING"]) == (1, 2, 0, 0)
    assert statuses(svc) == {"ok/r": COMPLETED, "bad/r": PENDING, "lost/r": PENDING}
    bad = svc.requests.get("bad/r")
    assert int(bad["retries"]) == 1 and bad["reason"] == "CUDA out of memory"
    assert "AlgorithmError" in svc.requests.get("lost/r")["reason"]
    [model] = svc.models.models_of("ok")
    assert model["artifact_uri"] == "s3://fanout-test/models/ok/r/" and model["job_name"] == job
    assert model["base_model"] == svc.settings.model_uri
    # the retried requests go out in a new job (same requests, new attempt: new name)
    retry = handlers.launch_pending({})
    assert retry["launched"] == 2 and retry["jobs"][0] != job


def test_retries_run_out_into_failed(svc):
    svc.settings = replace(svc.settings, max_retries=0)
    handlers.on_upload(upload_request(svc, "u", "r"))
    job = handlers.launch_pending({})["jobs"][0]
    event = load_event("job_state_change.json", bucket="fanout-test", job=job, status="Stopped", reason="")
    assert handlers.on_job_state_change(event)["FAILED"] == 1
    assert svc.requests.get("u/r")["status"] == FAILED
    progress = load_event("job_state_change.json", bucket="fanout-test", job=job, status="InProgress", reason="")
    assert handlers.on_job_state_change(progress)["ignored"] is True


def upload_artifacts(svc, user, request, manifest=None):
    """What the container uploads to a task's output_uri: the LoRA, then manifest.json last."""
    prefix = f"models/{user}/{request}/"
    weights = b"safetensors bytes"
    svc.objects.s3.put_object(Bucket="fanout-test", Key=prefix + "pytorch_lora_weights.safetensors", Body=weights)
    if manifest is None:
        manifest = {"task_id": task_id_for(user, request), "step": 400,
                    "files": [{"path": "pytorch_lora_weights.safetensors", "bytes": len(weights), "sha256": "0" * 64}]}
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    svc.objects.s3.put_object(Bucket="fanout-test", Key=prefix + "manifest.json", Body=body)
    return load_event("s3_task_artifact.json", bucket="fanout-test", user=user, request=request)


def test_task_artifact_completes_before_the_job_ends_once(svc):
    handlers.on_upload(upload_request(svc, "u5", "r5"))
    job = handlers.launch_pending({})["jobs"][0]
    upload_artifacts(svc, "u5", "r5")
    event = load_event("s3_task_artifact.json", bucket="fanout-test", user="u5", request="r5")
    assert handlers.on_task_artifact(event)["results"] == {"models/u5/r5/manifest.json": "completed"}
    assert handlers.on_task_artifact(event)["results"] == {"models/u5/r5/manifest.json": "duplicate"}
    assert svc.requests.get("u5/r5")["status"] == COMPLETED
    assert len(svc.models.models_of("u5")) == 1
    # the job's own end later changes nothing
    write_status(svc, job, task_id_for("u5", "r5"), "completed")
    end = handlers.on_job_state_change(load_event("job_state_change.json", bucket="fanout-test", job=job,
                                                  status="Completed", reason=""))
    assert end["completed"] == 0 and svc.requests.get("u5/r5")["status"] == COMPLETED


def test_a_registered_model_says_what_the_inference_server_needs(svc):
    """serve/ takes a model by its id alone: the item names the LoRA file, the family and base."""
    handlers.on_upload(upload_request(svc, "u6", "r6"))
    handlers.launch_pending({})
    weights = b"safetensors bytes"
    event = upload_artifacts(svc, "u6", "r6", {
        "task_id": task_id_for("u6", "r6"), "family": "flux2-klein", "base_model": {"weights_sha256": "ab" * 32},
        "files": [{"path": "pytorch_lora_weights.safetensors", "bytes": len(weights)}]})
    assert handlers.on_task_artifact(event)["results"] == {"models/u6/r6/manifest.json": "completed"}
    [model] = svc.models.models_of("u6")
    assert model["adapter_uri"] == "s3://fanout-test/models/u6/r6/pytorch_lora_weights.safetensors"
    assert model["family"] == "flux2-klein" and model["base_weights_sha256"] == "ab" * 32
    assert model["base_model"] == "s3://fanout-test/base/sd15/"


def test_a_dead_launchers_claim_is_taken_over(svc):
    handlers.on_upload(upload_request(svc, "u", "r"))
    assert svc.requests.claim("u/r", "dead-lambda", svc.clock(), svc.ago(3600))
    assert launch_pending(svc)["launched"] == 0                   # fresh claim: left alone
    svc.settings = replace(svc.settings, claim_timeout_s=0)
    assert launch_pending(svc)["launched"] == 1


def test_handlers_read_settings_from_the_environment(aws_env, settings, monkeypatch):
    monkeypatch.setattr(handlers, "_service", None)
    monkeypatch.setenv("FANOUT_BUCKET", settings.bucket)
    monkeypatch.setenv("FANOUT_ENDPOINT_URL", aws_env)
    monkeypatch.setenv("FANOUT_ROLE_ARN", settings.role_arn)
    assert handlers.launch_pending({}) == {"jobs": [], "launched": 0, "released": 0, "failed": 0, "errors": [],
                                           "republished": 0, "warnings": []}
    monkeypatch.setattr(handlers, "_service", None)
    monkeypatch.delenv("FANOUT_BUCKET")
    with pytest.raises(Exception, match="FANOUT_BUCKET"):
        handlers.launch_pending({})


def test_rate_limiter_spaces_calls():
    now = [0.0]
    slept = []
    limiter = RateLimiter(1.0, clock=lambda: now[0], sleep=lambda s: slept.append(s))
    for _ in range(3):
        limiter.wait()
    assert slept == [1.0, 2.0]


def test_a_launcher_that_dies_after_creating_its_job_does_not_get_its_requests_trained_twice(svc, monkeypatch):
    for user in ("u1", "u2"):
        handlers.on_upload(upload_request(svc, user, "r"))

    def die(*args, **kwargs):            # the Lambda times out right after CreateTrainingJob
        raise TimeoutError("Task timed out after 900.00 seconds")

    with monkeypatch.context() as m:
        m.setattr(svc.requests, "mark_launched", die)
        with pytest.raises(TimeoutError):
            launch_pending(svc)
    [first_job] = all_jobs(svc)
    assert statuses(svc) == {"u1/r": "CLAIMED", "u2/r": "CLAIMED"}

    # Meanwhile another request arrives, so a fresh batch would differ (and get another name).
    handlers.on_upload(upload_request(svc, "u3", "r"))
    svc.settings = replace(svc.settings, claim_timeout_s=0)     # the dead launcher's claims are stale
    out = launch_pending(svc)
    assert out["launched"] == 3
    assert statuses(svc) == {"u1/r": LAUNCHED, "u2/r": LAUNCHED, "u3/r": LAUNCHED}
    assert svc.requests.get("u1/r")["job_name"] == svc.requests.get("u2/r")["job_name"] == first_job
    jobs = all_jobs(svc)
    assert len(jobs) == 2, "only the new request needed a new job"
    trained = [t for j in jobs for t in job_tasks(svc, j)]
    assert sorted(trained) == sorted({*trained}), "no request may be in two jobs"


def test_phone_photo_types_count_as_images_and_a_folder_of_captions_alone_has_none(svc):
    s3, bucket = svc.objects.s3, svc.settings.bucket
    photos = {"u1": ["IMG_0001.HEIC", "IMG_0002.heif", "web.avif", "IMG_0001.txt"], "u2": ["notes.txt", ".DS_Store"]}
    for user, names in photos.items():
        for name in names:
            s3.put_object(Bucket=bucket, Key=f"requests/{user}/r1/images/{name}", Body=b"photo")
        s3.put_object(Bucket=bucket, Key=f"requests/{user}/r1/request.json",
                      Body=json.dumps({"instance_prompt": "a photo of sks person"}).encode())
        handlers.on_upload(load_event("s3_request_uploaded.json", bucket=bucket, user=user, request="r1"))
    out = handlers.launch_pending({})
    assert out["launched"] == 1 and out["failed"] == 1
    reason = svc.requests.get("u2/r1")["reason"]
    assert "no images under s3://fanout-test/requests/u2/r1/images/" in reason and ".heic" in reason
    manifest = json.loads(svc.objects.get_text(f"s3://{bucket}/jobs/{out['jobs'][0]}/input/images.manifest"))
    assert sorted(manifest[1:]) == sorted(f"u1/r1/images/{n}" for n in photos["u1"]), "photos and their captions"
