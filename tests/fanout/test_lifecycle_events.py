"""Lifecycle events on EventBridge against a moto server: a bus whose rule sends every `fanout`
event to an SQS queue (what the app subscribes to), the handlers driven by the events AWS
delivers, each delivered twice; PutEvents throttled or partly refused; the crash window."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from decimal import Decimal

import pytest
from fanout_fakes import EventBridgeFaults, load_event
from test_serverless import job_tasks, statuses, upload_artifacts, upload_request

from fanout import handlers
from fanout import lifecycle as lc
from fanout.bootstrap import requests_table_spec
from fanout.errors import EventError
from fanout.service import Service, task_id_for
from fanout.store import COMPLETED, FAILED, LAUNCHED, NEEDS_REVIEW, PENDING

BUS, BUCKET = "fanout-events", "fanout-test"
GATE = {"dino": 0.5}
PASSED = {"verdict": "passed", "reasons": [], "scores": {"dino": 0.71, "clip_i": 0.83, "clip_t": 0.31, "drift": 0.08,
                                                          "copying": 0.62, "identity": None, "faces_per_image": []},
          "images": [{"path": "evaluation/0.png", "prompt": "a photo of sks dog", "seed": 1, "kind": "subject"}],
          "seconds": 12.5}
FAILED_Q = {**PASSED, "verdict": "failed_quality", "reasons": ["subject DINO 0.41 < 0.5"],
            "scores": {**PASSED["scores"], "dino": 0.41}}


@pytest.fixture
def app_queue(settings):
    """The app side: a rule on the bus sending every `fanout` event to an SQS queue."""
    events, sqs = settings.client("events"), settings.client("sqs")
    events.create_event_bus(Name=BUS)
    url = sqs.create_queue(QueueName="app-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="to-app", EventBusName=BUS, EventPattern=json.dumps({"source": ["fanout"]}))
    events.put_targets(Rule="to-app", EventBusName=BUS, Targets=[{"Id": "app", "Arn": arn}])
    return sqs, url


def make_svc(settings, monkeypatch, **changes) -> Service:
    service = Service.from_settings(replace(settings, event_bus=BUS, **changes))
    monkeypatch.setattr(handlers, "_service", service)
    return service


@pytest.fixture
def svc(settings, app_queue, monkeypatch):
    return make_svc(settings, monkeypatch)


def received(app_queue) -> list[dict]:
    """Every event the app's queue holds (drained), in arrival order."""
    sqs, url = app_queue
    found = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for m in messages:
            found.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return found


def by_request(envelopes: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in envelopes:
        assert e["source"] == "fanout" and e["detail-type"] in lc.DETAIL_TYPES
        out.setdefault(e["detail"]["request_key"], []).append(e["detail-type"])
    return out


def twice(handler, event):
    """Deliver an event twice (every AWS source delivers at least once); the first answer."""
    first = handler(event)
    handler(event)
    return first


def write_status(svc, job, user, state, error=None, quality=None):
    body = {"state": state, "step": 400 if state == "completed" else 37, "error": error}
    if quality:
        body["quality"] = quality
    svc.objects.put_text(f"s3://{BUCKET}/jobs/{job}/checkpoints/{task_id_for(user, 'r')}/status.json", json.dumps(body))


def end_job(svc, job, status):
    event = load_event("job_state_change.json", bucket=BUCKET, job=job, status=status, reason="AlgorithmError")
    return twice(handlers.on_job_state_change, event)


def preview(job, user, step, file="grid.png"):
    return load_event("s3_preview_uploaded.json", bucket=BUCKET, job=job, task=task_id_for(user, "r"), step=str(step), file=file)


def manifest(user, quality):
    return {"task_id": task_id_for(user, "r"), "files": [{"path": "pytorch_lora_weights.safetensors", "bytes": 17}],
            "quality": quality}


def test_the_full_path_publishes_each_transition_once_in_order(svc, app_queue):
    requests = {"ok": {}, "flaky": {}, "meh": {"hyperparameters": {"quality_gate": GATE}},
                "again": {"hyperparameters": {"quality_gate": GATE, "on_quality_fail": "retry", "max_train_steps": 400}}}
    for user, body in requests.items():
        twice(handlers.on_upload, upload_request(svc, user, "r", **body))
    twice(handlers.on_upload, upload_request(svc, "bad", "r", hyperparameters={"quality_gate": {"dinno": 0.5}}))
    # an ignored key and a malformed record publish nothing
    assert handlers.on_upload(load_event("s3_image_uploaded.json", bucket=BUCKET, user="ok", request="r"))["results"] == {
        "requests/ok/r/images/photo 1.jpg": "ignored"}
    with pytest.raises(EventError):
        handlers.on_upload(load_event("s3_batch_second_malformed.json", bucket=BUCKET, first="requests/ok/r/request.json",
                                      third="requests/flaky/r/request.json"))

    job = twice(handlers.launch_pending, {})["jobs"][0]
    assert twice(handlers.on_preview, preview(job, "ok", 5))["results"] == {
        f"jobs/{job}/checkpoints/ok.r/previews/step-5/grid.png": "recorded"}
    assert handlers.on_preview(preview(job, "ok", 10))["results"] == {
        f"jobs/{job}/checkpoints/ok.r/previews/step-10/grid.png": "duplicate"}
    assert list(handlers.on_preview(preview(job, "ok", 5, "0.png"))["results"].values()) == ["ignored"]
    assert twice(handlers.on_task_artifact, upload_artifacts(svc, "ok", "r", manifest("ok", PASSED)))["results"] == {
        "models/ok/r/manifest.json": "completed"}
    write_status(svc, job, "ok", "completed", quality=PASSED)
    write_status(svc, job, "flaky", "failed", error="CUDA out of memory")
    write_status(svc, job, "meh", "completed", quality=FAILED_Q)
    write_status(svc, job, "again", "completed", quality=FAILED_Q)
    first = end_job(svc, job, "Failed")
    assert (first["needs_review"], first["quality_retried"], first["PENDING"]) == (1, 1, 1)

    second = twice(handlers.launch_pending, {})["jobs"][0]
    assert sorted(job_tasks(svc, second)) == ["again.r", "flaky.r"]
    write_status(svc, second, "flaky", "completed")
    write_status(svc, second, "again", "completed", quality=PASSED)
    assert end_job(svc, second, "Completed")["completed"] == 2

    events = received(app_queue)
    assert by_request(events) == {
        "ok/r": [lc.REQUEST_ACCEPTED, lc.REQUEST_LAUNCHED, lc.PREVIEW_READY, lc.MODEL_READY],
        "flaky/r": [lc.REQUEST_ACCEPTED, lc.REQUEST_LAUNCHED, lc.REQUEST_RETRIED, lc.REQUEST_LAUNCHED, lc.MODEL_READY],
        "meh/r": [lc.REQUEST_ACCEPTED, lc.REQUEST_LAUNCHED, lc.MODEL_NEEDS_REVIEW],
        "again/r": [lc.REQUEST_ACCEPTED, lc.REQUEST_LAUNCHED, lc.REQUEST_RETRIED, lc.REQUEST_LAUNCHED, lc.MODEL_READY],
        "bad/r": [lc.REQUEST_FAILED]}
    ids = [e["detail"]["event_id"] for e in events]
    assert len(ids) == len(set(ids)) == 18
    detail = {(e["detail"]["request_key"], e["detail-type"], e["detail"]["attempt"]): e["detail"] for e in events}
    assert [e["detail"]["attempt"] for e in events if e["detail"]["request_key"] == "flaky/r"] == [1, 1, 2, 2, 2]
    assert detail[("flaky/r", lc.REQUEST_RETRIED, 2)]["reason"] == "CUDA out of memory"
    assert detail[("flaky/r", lc.MODEL_READY, 2)]["verdict"] == "not_evaluated"
    assert detail[("ok/r", lc.PREVIEW_READY, 1)]["preview_uri"] == f"s3://{BUCKET}/jobs/{job}/checkpoints/ok.r/previews/step-5/grid.png"
    ready = detail[("ok/r", lc.MODEL_READY, 1)]
    assert (ready["model_uri"], ready["verdict"], ready["job_name"]) == (f"s3://{BUCKET}/models/ok/r/", "passed", job)
    review = detail[("meh/r", lc.MODEL_NEEDS_REVIEW, 1)]
    assert review["verdict"] == "failed_quality" and "subject DINO 0.41 < 0.5" in review["reason"]
    retried = detail[("again/r", lc.REQUEST_RETRIED, 2)]
    assert retried["verdict"] == "failed_quality" and retried["scores"]["dino"] == 0.41
    assert detail[("again/r", lc.REQUEST_LAUNCHED, 2)]["job_name"] == second
    assert "field 'hyperparameters': quality_gate: unknown score(s) dinno" in detail[("bad/r", lc.REQUEST_FAILED, 1)]["reason"]

    assert statuses(svc) == {"ok/r": COMPLETED, "flaky/r": COMPLETED, "meh/r": NEEDS_REVIEW, "again/r": COMPLETED,
                             "bad/r": FAILED}
    [meh] = svc.models.models_of("meh")
    assert meh["verdict"] == "failed_quality" and meh["scores"]["dino"] == Decimal("0.41")
    assert meh["quality_reasons"] == ["subject DINO 0.41 < 0.5"]
    [again] = svc.models.models_of("again")
    assert again["verdict"] == "passed" and again["job_name"] == second     # the retrained model, registered once
    # the retrain: another seed, more steps (DINO below its minimum: underfit), recorded per attempt
    item = svc.requests.get("again/r")
    hp = json.loads(item["task"])["hyperparameters"]
    [attempt] = [json.loads(a) for a in item["attempts"]]
    assert hp["max_train_steps"] == 600 and hp["seed"] == attempt["next"]["seed"] != 0
    assert (attempt["attempt"], attempt["failing"], attempt["max_train_steps"]) == (1, ["dino"], 400)
    assert all("outbox" not in svc.requests.get(k) for k in statuses(svc))


def test_a_throttled_put_events_is_retried_by_botocore(settings, app_queue, monkeypatch):
    svc = make_svc(settings, monkeypatch, max_attempts=2)
    faults = EventBridgeFaults(throttle=2).attach(svc.events.client)
    out = handlers.on_upload(upload_request(svc, "u1", "r1"))
    assert out["results"] == {"requests/u1/r1/request.json": "created"} and faults.throttled == 2
    assert by_request(received(app_queue)) == {"u1/r1": [lc.REQUEST_ACCEPTED]}


def test_put_events_that_stays_throttled_fails_the_record_and_the_redelivery_publishes_once(settings, app_queue, monkeypatch):
    svc = make_svc(settings, monkeypatch, max_attempts=1)
    faults = EventBridgeFaults(throttle=2).attach(svc.events.client)
    event = upload_request(svc, "u1", "r1")
    # a direct S3 invocation raises, so Lambda retries it; the write itself stands (outbox)
    with pytest.raises(EventError, match="PublishError: PutEvents of Request Accepted for u1/r1"):
        handlers.on_upload(event)
    item = svc.requests.get("u1/r1")
    assert item["status"] == PENDING and [lc.Event.decode(m).detail_type for m in item["outbox"]] == [lc.REQUEST_ACCEPTED]
    assert received(app_queue) == [] and faults.throttled == 2
    stored_id = lc.Event.decode(next(iter(item["outbox"]))).event_id
    # the same record through SQS is reported per item
    sqs_event = load_event("sqs_request_uploaded.json", bucket=BUCKET, user="u1", request="r1")
    faults.throttle = 2
    assert {"itemIdentifier": "msg-good"} in handlers.on_upload(sqs_event)["batchItemFailures"]
    # the redelivery (EventBridge answers again) publishes the stored event, once
    assert handlers.on_upload(event)["results"] == {"requests/u1/r1/request.json": "duplicate"}
    assert handlers.on_upload(event)["results"] == {"requests/u1/r1/request.json": "duplicate"}
    [accepted] = received(app_queue)
    assert accepted["detail"]["event_id"] == stored_id and "outbox" not in svc.requests.get("u1/r1")


def test_entries_eventbridge_refuses_are_retried_then_left_for_the_sweep(svc, app_queue, monkeypatch):
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    faults = EventBridgeFaults(fail_entries=2).attach(svc.events.client)      # partial failure, retryable
    monkeypatch.setattr(svc.events, "_sleep", lambda s: None)
    job = handlers.launch_pending({})["jobs"][0]
    assert faults.failed == 2 and by_request(received(app_queue)) == {"u1/r1": [lc.REQUEST_ACCEPTED, lc.REQUEST_LAUNCHED]}

    # refused for good (not a retryable code): the job's end is recorded, the record fails
    faults.fail_entries, faults.code = 1, "MalformedDetail"
    svc.objects.put_text(f"s3://{BUCKET}/jobs/{job}/checkpoints/u1.r1/status.json", json.dumps({"state": "completed"}))
    end = load_event("job_state_change.json", bucket=BUCKET, job=job, status="Completed", reason="")
    with pytest.raises(Exception, match="EventBridge refused Model Ready for u1/r1 after 1 attempt"):
        handlers.on_job_state_change(end)
    assert statuses(svc) == {"u1/r1": COMPLETED} and received(app_queue) == []
    # the scheduled launcher leaves fresh events to their writer, then re-publishes them once
    assert handlers.launch_pending({})["republished"] == 0
    later = (dt.datetime.fromisoformat(svc.clock()) + dt.timedelta(minutes=10)).isoformat(timespec="milliseconds")
    monkeypatch.setattr(svc, "clock", lambda: later)
    assert handlers.launch_pending({})["republished"] == 1
    assert handlers.launch_pending({})["republished"] == 0
    [ready] = received(app_queue)
    assert ready["detail-type"] == lc.MODEL_READY and ready["detail"]["request_key"] == "u1/r1"
    assert svc.requests.client.scan(TableName=svc.settings.requests_table, IndexName="by-outbox")["Items"] == []


def test_the_crash_window_between_write_and_publish_is_closed_by_redelivery_and_sweep(svc, app_queue, monkeypatch):
    for user in ("u1", "u2"):
        handlers.on_upload(upload_request(svc, user, "r"))
    job = handlers.launch_pending({})["jobs"][0]
    received(app_queue)
    svc.objects.put_text(f"s3://{BUCKET}/jobs/{job}/checkpoints/u1.r/status.json", json.dumps({"state": "completed"}))

    def die(*args, **kwargs):                 # the Lambda is killed right after its writes
        raise TimeoutError("Task timed out after 300.00 seconds")

    end = load_event("job_state_change.json", bucket=BUCKET, job=job, status="Failed", reason="AlgorithmError")
    with monkeypatch.context() as m:
        m.setattr(svc.events, "publish", die)
        with pytest.raises(TimeoutError):
            handlers.on_job_state_change(end)
    assert statuses(svc) == {"u1/r": COMPLETED, "u2/r": LAUNCHED} and received(app_queue) == []
    # Lambda's retry of the event: u1's write lost (COMPLETED), its pending event goes out; u2 moves on
    handlers.on_job_state_change(end)
    assert by_request(received(app_queue)) == {"u1/r": [lc.MODEL_READY], "u2/r": [lc.REQUEST_RETRIED]}

    # published, then killed before the outbox delete: the sweep sends it again, same event_id
    handlers.launch_pending({})
    with monkeypatch.context() as m:
        m.setattr(svc.requests, "events_published", die)
        with pytest.raises(EventError):
            handlers.on_upload(upload_request(svc, "u3", "r"))
    later = (dt.datetime.fromisoformat(svc.clock()) + dt.timedelta(minutes=10)).isoformat(timespec="milliseconds")
    monkeypatch.setattr(svc, "clock", lambda: later)
    handlers.launch_pending({})
    twice_sent = [e for e in received(app_queue) if e["detail"]["request_key"] == "u3/r"]
    assert [e["detail-type"] for e in twice_sent][:2] == [lc.REQUEST_ACCEPTED, lc.REQUEST_ACCEPTED]
    assert twice_sent[0]["detail"]["event_id"] == twice_sent[1]["detail"]["event_id"]      # consumers deduplicate
    assert twice_sent[0]["id"] != twice_sent[1]["id"]


def test_without_a_bus_nothing_is_kept_or_sent(settings, app_queue, monkeypatch):
    svc = Service.from_settings(settings)
    monkeypatch.setattr(handlers, "_service", svc)
    assert svc.events is None
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    handlers.launch_pending({})
    assert "outbox" not in svc.requests.get("u1/r1") and received(app_queue) == []


def test_a_manifest_with_a_huge_quality_list_gives_an_event_under_the_limits(svc, app_queue):
    handlers.on_upload(upload_request(svc, "u1", "r"))
    handlers.launch_pending({})
    huge = {**FAILED_Q, "reasons": [f"copies instance photo img{i}.jpg: 0.97 " + "x" * 200 for i in range(5000)]}
    handlers.on_task_artifact(upload_artifacts(svc, "u1", "r", manifest("u1", huge)))
    events = received(app_queue)
    review = next(e for e in events if e["detail-type"] == lc.MODEL_NEEDS_REVIEW)
    assert review["detail"]["trimmed"] == ["reasons"] and 0 < len(review["detail"]["reasons"]) < 5000
    assert len(json.dumps(review["detail"])) < lc.MAX_EVENT_BYTES < lc.MAX_ENTRY_BYTES
    [model] = svc.models.models_of("u1")
    assert len(model["quality_reasons"]) == 20 and all(len(r) <= 300 for r in model["quality_reasons"])


def test_a_requests_table_made_before_the_outbox_index_still_launches_and_says_why(settings, app_queue, monkeypatch):
    spec = requests_table_spec("old-requests")
    spec["GlobalSecondaryIndexes"] = [i for i in spec["GlobalSecondaryIndexes"] if i["IndexName"] != "by-outbox"]
    spec["AttributeDefinitions"] = [a for a in spec["AttributeDefinitions"] if a["AttributeName"] != "outbox_at"]
    settings.client("dynamodb").create_table(**spec)
    svc = make_svc(settings, monkeypatch, requests_table="old-requests")
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    out = handlers.launch_pending({})
    assert out["launched"] == 1 and "the requests table has no by-outbox index" in out["errors"][0]
    assert by_request(received(app_queue)) == {"u1/r1": [lc.REQUEST_ACCEPTED, lc.REQUEST_LAUNCHED]}
