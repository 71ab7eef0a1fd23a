"""What a verdict does to a request (pure), how events are built and trimmed, and what
`make demo` prints from a local job's files."""

from __future__ import annotations

import json

import pytest

from fanout import lifecycle as lc
from fanout.quality import FAILED_QUALITY, NOT_EVALUATED, model_fields, read_quality, retrain

ITEM = {"request_key": "u1/r1", "user_id": "u1", "request_id": "r1", "retries": 0}


def failed(**scores):
    return read_quality({"verdict": "failed_quality", "reasons": ["below the gate"], "scores": scores})


def test_a_retrain_moves_the_steps_the_way_the_failing_scores_point():
    task = {"task_id": "u1.r1", "hyperparameters": {"quality_gate": {"dino": 0.5, "copying": 0.9}, "max_train_steps": 800}}
    underfit, record = retrain(task, {}, failed(dino=0.3, copying=0.5), "u1/r1", 1)
    overfit, _ = retrain(task, {}, failed(dino=0.7, copying=0.97), "u1/r1", 1)
    assert underfit["hyperparameters"]["max_train_steps"] == 1200 and overfit["hyperparameters"]["max_train_steps"] == 560
    assert record["failing"] == ["dino"] and record["max_train_steps"] == 800 and record["seed"] == 0
    # the seed depends on the request and attempt only, so a redelivered event picks the same one
    again, _ = retrain(task, {}, failed(dino=0.3, copying=0.5), "u1/r1", 1)
    second, _ = retrain(task, {}, failed(dino=0.3, copying=0.5), "u1/r1", 2)
    assert again == underfit and second["hyperparameters"]["seed"] != underfit["hyperparameters"]["seed"]
    # the job's gate and steps apply when the task sets none (SageMaker's string forms too)
    job_hp = {"quality_gate": '{"clip_t": 0.3}', "max_train_steps": '"400"'}
    moved, _ = retrain({"task_id": "t"}, job_hp, failed(clip_t=0.2), "u1/r1", 1)
    assert moved["hyperparameters"]["max_train_steps"] == 280


@pytest.mark.parametrize("value", [None, "passed", [], {"verdict": None}, {"scores": {"dino": 0.5}}])
def test_a_missing_or_unreadable_quality_is_not_evaluated(value):
    assert read_quality(value).verdict == NOT_EVALUATED


def test_scores_are_stored_as_dynamodb_numbers_and_junk_scores_as_null():
    q = read_quality({"verdict": FAILED_QUALITY, "reasons": ["r"] * 50,
                      "scores": {"dino": 0.41, "drift": float("nan"), "faces_per_image": [1, 0, "x"], "mine": 3}})
    fields = model_fields(q)
    assert str(fields["scores"]["dino"]) == "0.41" and fields["scores"]["drift"] is None
    assert fields["scores"]["faces_per_image"] == [1, 0, None] and "mine" not in fields["scores"]
    assert len(fields["quality_reasons"]) == 20


def test_events_are_validated_stable_and_trimmed():
    with pytest.raises(ValueError, match="unknown detail-type 'Model Done'"):
        lc.build("Model Done", ITEM, "2026-12-01T10:00:00.000+00:00")
    a = lc.build(lc.MODEL_READY, ITEM, "2026-12-01T10:00:00.000+00:00", key_parts=["job-1"], job_name="job-1")
    b = lc.build(lc.MODEL_READY, ITEM, "2026-12-01T10:05:00.000+00:00", key_parts=["job-1"], job_name="job-1")
    c = lc.build(lc.MODEL_READY, {**ITEM, "retries": 1}, "2026-12-01T10:00:00.000+00:00", key_parts=["job-2"])
    assert a.event_id == b.event_id != c.event_id and c.detail["attempt"] == 2
    assert lc.Event.decode(a.encode()) == a and "verdict" not in a.detail      # None fields are left out
    big = lc.build(lc.MODEL_NEEDS_REVIEW, ITEM, "2026-12-01T10:00:00.000+00:00", reason="x" * 5000,
                   reasons=["copies instance photo img.jpg: 0.97"] * 20000, scores={"dino": 0.4})
    assert lc.entry_bytes(big) <= lc.MAX_EVENT_BYTES and big.detail["trimmed"] == ["reasons"]
    assert len(big.detail["reason"]) == lc.MAX_REASON and big.detail["scores"] == {"dino": 0.4}


def test_the_demo_prints_the_events_a_local_job_would_publish(tmp_path):
    s3 = tmp_path / "s3" / "checkpoints"
    (s3 / "ana-toy" / "previews" / "step-10").mkdir(parents=True)
    (s3 / "ana-toy" / "previews" / "step-5").mkdir(parents=True)
    for step in (5, 10):
        (s3 / "ana-toy" / "previews" / f"step-{step}" / "grid.png").write_bytes(b"png")
    (s3 / "ana-toy" / "status.json").write_text(json.dumps({"state": "completed", "started_at": 1.8e9, "finished_at": 1.8e9 + 30}))
    (s3 / "fay-toy").mkdir()
    (s3 / "fay-toy" / "status.json").write_text(json.dumps({"state": "failed", "error": "no images in fay-never-uploaded"}))
    events = lc.local_job_events(tmp_path, [{"task_id": "ana-toy", "user_id": "ana"}, {"task_id": "fay-toy", "user_id": "fay"}])
    assert [(e.detail["request_key"], e.detail_type) for e in events] == [
        ("ana/ana-toy", lc.REQUEST_ACCEPTED), ("ana/ana-toy", lc.REQUEST_LAUNCHED), ("ana/ana-toy", lc.PREVIEW_READY),
        ("ana/ana-toy", lc.MODEL_READY), ("fay/fay-toy", lc.REQUEST_ACCEPTED), ("fay/fay-toy", lc.REQUEST_LAUNCHED),
        ("fay/fay-toy", lc.REQUEST_FAILED)]
    assert events[2].detail["preview_step"] == 5 and events[3].detail["verdict"] == "not_evaluated"
    text = lc.format_events(events)
    assert "Model Ready" in text and "no images in fay-never-uploaded" in text and '"source": "fanout"' in text
