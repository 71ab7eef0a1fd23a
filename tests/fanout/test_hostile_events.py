"""Hostile and broken input on the serverless path, with events shaped as AWS delivers them
(direct S3, S3 via SQS, EventBridge) against the moto server: what a user would see."""

from __future__ import annotations

import json

import pytest
from fanout_fakes import load_event
from test_serverless import statuses, upload_artifacts, upload_request

from fanout import handlers
from fanout.errors import EventError
from fanout.service import MAX_REQUEST_BYTES, launch_pending, task_id_for
from fanout.store import COMPLETED, FAILED, LAUNCHED, PENDING

BUCKET = "fanout-test"


def key(user, request):
    return f"requests/{user}/{request}/request.json"


def put_request(svc, user, request, body: bytes, images=1):
    for i in range(images):
        svc.objects.s3.put_object(Bucket=BUCKET, Key=f"requests/{user}/{request}/images/{i}.jpg", Body=b"jpg")
    svc.objects.s3.put_object(Bucket=BUCKET, Key=key(user, request), Body=body)
    return load_event("s3_request_uploaded.json", bucket=BUCKET, user=user, request=request)


def s3_calls(client) -> list[str]:
    """Every S3 operation the client sends from now on (botocore's own event hook)."""
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
    return calls


# -- a malformed record costs only itself --------------------------------------------------

def test_direct_batch_with_a_malformed_second_record_processes_the_third(svc):
    upload_request(svc, "u1", "r1")
    upload_request(svc, "u3", "r3")
    event = load_event("s3_batch_second_malformed.json", bucket=BUCKET, first=key("u1", "r1"), third=key("u3", "r3"))
    # a direct S3 invocation is asynchronous: only a raise makes Lambda retry it (then its
    # on-failure destination takes it); the good records are already recorded by then
    with pytest.raises(EventError, match=r"1 record\(s\) failed, the others were processed: Records\[1\]: not an S3"):
        handlers.on_upload(event)
    assert statuses(svc) == {"u1/r1": PENDING, "u3/r3": PENDING}
    with pytest.raises(EventError):                       # Lambda's retry of the same event
        handlers.on_upload(event)
    assert statuses(svc) == {"u1/r1": PENDING, "u3/r3": PENDING}


def test_sqs_batch_reports_only_the_unreadable_messages(svc):
    upload_request(svc, "u1", "r1")
    upload_request(svc, "u3", "r3")
    event = load_event("sqs_batch_malformed.json", bucket=BUCKET, first=key("u1", "r1"), third=key("u3", "r3"))
    out = handlers.on_upload(event)
    # only these two are redelivered (then moved to the queue's DLQ); S3's TestEvent is no failure
    assert out["batchItemFailures"] == [{"itemIdentifier": "msg-null-body"}, {"itemIdentifier": "msg-no-key"}]
    assert out["results"] == {key("u1", "r1"): "created", key("u3", "r3"): "created"}
    assert statuses(svc) == {"u1/r1": PENDING, "u3/r3": PENDING}


def test_artifact_batch_with_a_malformed_record_completes_the_others(svc):
    for user in ("u1", "u3"):
        handlers.on_upload(upload_request(svc, user, "r"))
    launch_pending(svc)
    for user in ("u1", "u3"):
        upload_artifacts(svc, user, "r")
    event = load_event("sqs_batch_malformed.json", bucket=BUCKET, first="models/u1/r/manifest.json",
                       third="models/u3/r/manifest.json")
    out = handlers.on_task_artifact(event)
    assert len(out["batchItemFailures"]) == 2
    assert statuses(svc) == {"u1/r": COMPLETED, "u3/r": COMPLETED}
    assert len(svc.models.models_of("u1")) == len(svc.models.models_of("u3")) == 1


@pytest.mark.parametrize("detail_type, source", [("Object Created", "aws.s3"),
                                                 ("SageMaker Training Job State Change", "aws.sagemaker")])
def test_detail_null_is_a_clear_error_not_a_type_error(svc, detail_type, source):
    event = load_event("eventbridge_detail_null.json", detail_type=detail_type, source=source)
    handler = handlers.on_upload if source == "aws.s3" else handlers.on_job_state_change
    with pytest.raises(EventError, match="detail"):
        handler(event)
    assert statuses(svc) == {}


# -- deletions are not uploads -----------------------------------------------------------

def test_a_deleted_request_json_is_neither_a_failure_nor_retried(svc):
    for name in ("s3_object_removed.json", "eventbridge_object_deleted.json"):
        out = handlers.on_upload(load_event(name, bucket=BUCKET, key=key("u1", "r1")))
        assert out == {"results": {key("u1", "r1"): "deleted"}, "batchItemFailures": []}
    assert statuses(svc) == {}


def test_a_deleted_manifest_completes_nothing_and_registers_nothing(svc):
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    launch_pending(svc)
    for name in ("s3_object_removed.json", "eventbridge_object_deleted.json"):
        out = handlers.on_task_artifact(load_event(name, bucket=BUCKET, key="models/u1/r1/manifest.json"))
        assert out["results"] == {"models/u1/r1/manifest.json": "deleted"}
    assert statuses(svc) == {"u1/r1": LAUNCHED}
    assert svc.models.models_of("u1") == []


# -- a model is registered only when its manifest vouches for it ----------------------------

@pytest.mark.parametrize("manifest, why", [
    (b"", "is not valid JSON"),
    (b"{not json", "is not valid JSON"),
    (b"[]", "is not a JSON manifest object"),
    ({"task_id": "someone.else", "files": [{"path": "pytorch_lora_weights.safetensors", "bytes": 17}]},
     "the manifest of task 'someone.else', not of 'u1.r1'"),
    ({"task_id": "u1.r1", "files": []}, "does not list pytorch_lora_weights.safetensors"),
    ({"task_id": "u1.r1", "files": [{"path": "pytorch_lora_weights.safetensors", "bytes": 17},
                                    {"path": "kohya.safetensors", "bytes": 5}]}, "missing or of another size"),
])
def test_a_manifest_that_does_not_vouch_for_the_task_registers_no_model(svc, manifest, why):
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    launch_pending(svc)
    out = handlers.on_task_artifact(upload_artifacts(svc, "u1", "r1", manifest))
    assert out["results"] == {"models/u1/r1/manifest.json": "invalid"} and out["batchItemFailures"] == []
    item = svc.requests.get("u1/r1")
    assert item["status"] == LAUNCHED and why in item["reason"]
    assert svc.models.models_of("u1") == []
    # the real manifest arriving later completes it
    assert handlers.on_task_artifact(upload_artifacts(svc, "u1", "r1"))["results"] == {
        "models/u1/r1/manifest.json": "completed"}
    assert len(svc.models.models_of("u1")) == 1


def test_a_late_manifest_of_an_earlier_attempt_does_not_settle_a_retrained_request(svc):
    """A quality retry retrains with another seed; the first attempt's manifest arriving late
    (its seed in hyperparameters.config, where train writes it) must not complete the new one."""
    handlers.on_upload(upload_request(svc, "u1", "r1", hyperparameters={"seed": 7}))
    launch_pending(svc)
    files = [{"path": "pytorch_lora_weights.safetensors", "bytes": 17}]
    old = {"task_id": "u1.r1", "files": files, "hyperparameters": {"config": {"seed": 0}}}
    out = handlers.on_task_artifact(upload_artifacts(svc, "u1", "r1", old))
    assert out["results"] == {"models/u1/r1/manifest.json": "invalid"}
    assert "from an earlier attempt (seed 0" in svc.requests.get("u1/r1")["reason"]
    new = {**old, "hyperparameters": {"config": {"seed": 7}}}
    assert handlers.on_task_artifact(upload_artifacts(svc, "u1", "r1", new))["results"] == {
        "models/u1/r1/manifest.json": "completed"}


# -- job events of other systems' jobs --------------------------------------------------------

def test_a_job_that_is_not_ours_makes_us_touch_no_bucket(svc):
    other = svc.objects.s3
    other.create_bucket(Bucket="someone-elses-bucket")
    other.put_object(Bucket="someone-elses-bucket", Key="ckpt/t1/status.json", Body=b'{"state": "completed"}')
    event = load_event("job_state_change.json", bucket="someone-elses-bucket", job="their-job", status="Completed",
                       reason="")
    calls = s3_calls(svc.objects.s3)
    out = handlers.on_job_state_change(event)
    assert out["ignored"] is True and out["reason"] == "no request of ours is in this job"
    assert calls == []


def test_our_job_is_read_from_our_own_prefix_whatever_the_event_says(svc):
    handlers.on_upload(upload_request(svc, "u1", "r1"))
    job = launch_pending(svc)["jobs"][0]
    svc.objects.put_text(f"s3://{BUCKET}/jobs/{job}/checkpoints/u1.r1/status.json", json.dumps({"state": "completed"}))
    event = load_event("job_state_change.json", bucket="someone-elses-bucket", job=job, status="Completed", reason="")
    calls = s3_calls(svc.objects.s3)
    assert handlers.on_job_state_change(event)["completed"] == 1
    assert calls == ["ListObjectsV2", "GetObject"]         # our bucket only (no such other bucket exists)


# -- task ids --------------------------------------------------------------------------------

def test_requests_whose_plain_ids_would_collide_both_train(svc):
    assert task_id_for("a.b", "c") != task_id_for("a", "b.c")
    handlers.on_upload(upload_request(svc, "a.b", "c"))
    handlers.on_upload(upload_request(svc, "a", "b.c"))
    out = launch_pending(svc)
    assert out["launched"] == 2 and out["errors"] == []
    assert statuses(svc) == {"a.b/c": LAUNCHED, "a/b.c": LAUNCHED}


def test_a_task_id_collision_from_older_records_is_never_silent(svc):
    """Requests recorded under an older id scheme may share a task id: the second one waits
    for a later job, saying why, instead of staying CLAIMED in no job."""
    for user, request in (("a.b", "c"), ("a", "b.c")):
        upload_request(svc, user, request)
        task = {"task_id": "a.b.c", "instance_data": f"{user}/{request}/images", "instance_prompt": "a photo of sks",
                "user_id": user, "output_uri": f"s3://{BUCKET}/models/{user}/{request}/"}
        svc.requests.put_new(user, request, task, svc.clock())
    first = launch_pending(svc)
    assert first["launched"] == 1 and first["released"] == 1
    assert "task id 'a.b.c' is also the task id of request" in first["errors"][0]
    waiting = [k for k, s in statuses(svc).items() if s == PENDING]
    assert len(waiting) == 1 and "left for a later job" in svc.requests.get(waiting[0])["reason"]
    assert launch_pending(svc)["launched"] == 1
    assert set(statuses(svc).values()) == {LAUNCHED}


# -- request.json that cannot be accepted: a FAILED record with its reason ---------------------

@pytest.mark.parametrize("body, reason", [
    (b"[1, 2]", "request.json is not a JSON object (got list)"),
    (b'"a photo"', "request.json is not a JSON object (got str)"),
    (b"{\"instance_prompt\": ", "request.json is not valid JSON (Expecting value"),
    (b"\xff\xfe{}", "request.json is not UTF-8 text"),
    (b'{"instance_prompt": "p", "metadata": ["plan", "pro"]}', "field 'metadata' must be a JSON object"),
    (b'{"instance_prompt": "p", "metadata": "pro"}', "field 'metadata' must be a JSON object"),
    (b'{"instance_prompt": "p", "hyperparameters": {"max_train_steps": 0}}', "max_train_steps: must be at least 1"),
    (b'{"instance_prompt": "p", "hyperparameters": {"learning_rate": "fast"}}', "learning_rate: 'fast' is not a number"),
    (b'{"instance_prompt": "p", "hyperparameters": {"resolution": 500}}', "resolution: must be a multiple of 8"),
    (b'{"instance_prompt": "p", "hyperparameters": {"mixed_precision": "fp8"}}', "'fp8' is not one of no, fp16, bf16"),
    (b'{"instance_prompt": "p", "class_prompt": "a dog", "hyperparameters": {"num_class_images": 0}}',
     "num_class_images: must be at least 1 with a class prompt"),
])
def test_an_unacceptable_request_json_is_recorded_failed_naming_the_key(svc, body, reason):
    # direct S3 delivery: the handler returns normally, the FAILED record is the answer
    out = handlers.on_upload(put_request(svc, "u1", "r1", body))
    assert out == {"results": {key("u1", "r1"): "invalid"}, "batchItemFailures": []}
    item = svc.requests.get("u1/r1")
    assert item["status"] == FAILED and reason in item["reason"]
    assert f"s3://{BUCKET}/{key('u1', 'r1')}" in item["reason"]


def test_sagemaker_string_values_are_accepted_at_upload(svc):
    body = {"instance_prompt": "p", "hyperparameters": {"max_train_steps": "\"400\"", "learning_rate": "1e-4",
                                                        "train_text_encoder": "true", "snr_gamma": "none"}}
    assert handlers.on_upload(put_request(svc, "u1", "r1", json.dumps(body).encode()))["results"] == {
        key("u1", "r1"): "created"}


def test_an_oversize_request_is_refused_with_the_limit_and_stored_reasons_are_bounded(svc):
    big = json.dumps({"instance_prompt": "x" * (MAX_REQUEST_BYTES + 1)}).encode()
    handlers.on_upload(put_request(svc, "u1", "big", big))
    item = svc.requests.get("u1/big")
    assert item["status"] == FAILED and f"larger than {MAX_REQUEST_BYTES} bytes" in item["reason"]
    assert "400 KB" in item["reason"] and item["task"] == "{}"
    # a valid request just under the limit is stored whole
    fits = {"instance_prompt": "p", "validation_prompts": ["a photo of sks dog " * 10] * 330}
    assert MAX_REQUEST_BYTES - 5000 < len(json.dumps(fits)) < MAX_REQUEST_BYTES
    assert handlers.on_upload(put_request(svc, "u1", "fits", json.dumps(fits).encode()))["results"] == {
        key("u1", "fits"): "created"}
    assert len(json.loads(svc.requests.get("u1/fits")["task"])["validation_prompts"]) == 330
    # just under the limit, but every problem quotes a long value: the reason is cut, the record stored
    noisy = json.dumps({f"field{i}": "y" * 100 for i in range(500)}).encode()
    assert len(noisy) < MAX_REQUEST_BYTES
    handlers.on_upload(put_request(svc, "u1", "noisy", noisy))
    item = svc.requests.get("u1/noisy")
    assert item["status"] == FAILED and "unknown field(s) field0" in item["reason"] and len(item["reason"]) <= 1000


def test_a_request_that_vanished_before_it_was_read_is_retried_not_dropped(svc):
    """Nothing to record FAILED (no file): a direct invocation raises, so Lambda retries it
    and then hands it to the function's on-failure destination."""
    event = load_event("s3_request_uploaded.json", bucket=BUCKET, user="u9", request="gone")
    with pytest.raises(EventError, match="NoSuchKey"):
        handlers.on_upload(event)


def test_eventbridge_upload_is_read_like_the_others(svc):
    upload_request(svc, "u1", "r1")
    out = handlers.on_upload(load_event("eventbridge_object_created.json", bucket=BUCKET, key=key("u1", "r1")))
    assert out["results"] == {key("u1", "r1"): "created"}


# -- property: any batch, any subset malformed -> the good ones exactly once -----------------

from itertools import count  # noqa: E402

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_BROKEN_RECORDS = (
    {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}}},
    {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"size": 1}}},
    {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"key": 7}}},
    {"eventSource": "aws:s3", "s3": None},
    "not a record",
)
_BROKEN_BODIES = ("null", "[]", "{not json", '{"Records": null}', '{"Records": [{"s3": {"object": {}}}]}')
_examples = count()


def _good_record(k: str) -> dict:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": BUCKET}, "object": {"key": k, "sequencer": k}}}


def _batch(items, delivery: str) -> dict:
    """items: a key (well-formed) or an int (the n-th kind of breakage), in batch order."""
    if delivery == "direct":
        return {"Records": [_good_record(i) if isinstance(i, str) else _BROKEN_RECORDS[i] for i in items]}
    return {"Records": [{"messageId": f"m{n}", "eventSource": "aws:sqs", "receiptHandle": "AQEB...",
                         "body": json.dumps({"Records": [_good_record(i)]}) if isinstance(i, str) else _BROKEN_BODIES[i]}
                        for n, i in enumerate(items)]}


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.one_of(st.none(), st.integers(0, len(_BROKEN_RECORDS) - 1)), min_size=1, max_size=6),
       delivery=st.sampled_from(["direct", "sqs"]))
def test_any_batch_with_any_malformed_subset_processes_the_good_records_exactly_once(svc, monkeypatch, shape,
                                                                                      delivery):
    prefix = f"p{next(_examples)}"
    items = []
    for n, broken in enumerate(shape):
        if broken is None:
            upload_request(svc, f"{prefix}-{n}", "r", images=0)
            items.append(key(f"{prefix}-{n}", "r"))
        else:
            items.append(broken)
    good = [i for i in items if isinstance(i, str)]
    outcomes: dict[str, list[str]] = {k: [] for k in good}

    def counted(service, bucket, k):                      # the real register_upload, counted
        outcome = register_upload(service, bucket, k)
        outcomes[k].append(outcome)
        return outcome

    from fanout.service import register_upload
    monkeypatch.setattr(handlers, "register_upload", counted)
    event = _batch(items, delivery)
    for _ in range(3):           # Lambda's two async retries / SQS redelivery up to maxReceiveCount 3
        try:
            out = handlers.on_upload(event)
        except EventError:
            assert delivery == "direct" and len(good) < len(items)
            continue                                      # Lambda retries the whole event
        if delivery == "direct":
            assert len(good) == len(items)
            break
        failed = {f["itemIdentifier"] for f in out["batchItemFailures"]}
        assert failed == {f"m{n}" for n, i in enumerate(items) if not isinstance(i, str)}
        event = {"Records": [r for r in event["Records"] if r["messageId"] in failed]}   # only these come back
        if not failed:
            break
    assert {k: o.count("created") for k, o in outcomes.items()} == {k: 1 for k in good}
    mine = {k: s for k, s in statuses(svc).items() if k.startswith(prefix + "-")}
    assert mine == {f"{prefix}-{n}/r": PENDING for n, i in enumerate(items) if isinstance(i, str)}
