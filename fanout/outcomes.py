"""The request transitions that publish lifecycle events and count metrics (used by service.py).

Each function builds the transition's event (only when FANOUT_EVENT_BUS is set), makes the
conditional write that carries it into the item's outbox, counts the metric, and returns what
was written; `publish` then sends what the write left pending. A write that loses its
condition carries no event; a caller holding an item that lost (a redelivery) publishes what
that item still has pending, which is how a handler that died after its write is caught up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanout import lifecycle as lc
from fanout.errors import PublishError
from fanout.events import PREVIEW_KEY
from fanout.quality import Quality, failure_reason, read_quality, retrain, task_setting
from fanout.store import COMPLETED, FAILED, NEEDS_REVIEW, PENDING
from fanout.telemetry import SECONDS, reason_class

if TYPE_CHECKING:
    from fanout.service import Service

SETTLED = (COMPLETED, NEEDS_REVIEW)
log = logging.getLogger("fanout")


def event(svc: "Service", detail_type: str, item: dict, now: str, **fields: Any) -> str | None:
    """The encoded event for a transition's write, or None when no bus is configured."""
    return lc.build(detail_type, item, now, **fields).encode() if svc.events else None


def publish(svc: "Service", key: str, written: dict | None, quiet: bool = False) -> None:
    """Publish the outbox of ``written``: the item as a write returned it or, after a write that
    lost, as it was read (a `by-job` index copy may lag by a moment: an event published twice
    keeps its event_id, which is what consumers deduplicate on). ``quiet`` (the launcher, whose
    source is a schedule): a PublishError is logged, not raised; the events stay in the outbox
    for the next runs' sweep, and EventPublishFailures counts it."""
    if not svc.events or not written or not written.get("outbox"):
        return
    try:
        svc.events.publish(key, written["outbox"])
    except PublishError as exc:
        if not quiet:
            raise
        log.error("request %s: %s (kept in its outbox for the launcher's sweep)", key, exc)


def catch_up(svc: "Service", item: dict, written: dict | None) -> list[str]:
    """Publish what a write left pending or, when it lost (a redelivery), what ``item`` still
    has pending; the PublishError's text when EventBridge would not take it (else [])."""
    try:
        publish(svc, item["request_key"], written or item)
    except PublishError as exc:
        return [str(exc)]
    return []


def _age_s(since: str | None, now: str) -> float | None:
    try:
        return (dt.datetime.fromisoformat(now) - dt.datetime.fromisoformat(since)).total_seconds() if since else None
    except ValueError:
        return None


def record_new(svc: "Service", user_id: str, request_id: str, task: dict, reason: str | None = None) -> bool:
    """A new request, PENDING ("Request Accepted") or, with ``reason``, FAILED ("Request
    Failed": its request.json was refused). False when it existed (a redelivered upload)."""
    key, now = f"{user_id}/{request_id}", svc.clock()
    item = {"request_key": key, "user_id": user_id, "request_id": request_id, "retries": 0}
    kind = lc.REQUEST_FAILED if reason else lc.REQUEST_ACCEPTED
    outbox = event(svc, kind, item, now, key_parts=[now], reason=reason)
    created = svc.requests.put_new(user_id, request_id, task, now, status=FAILED if reason else PENDING,
                                   reason=reason, outbox=outbox)
    if created:
        svc.telemetry.count("RequestsAccepted" if not reason else "RequestsFailed",
                            **({"ReasonClass": "invalid_request"} if reason else {}))
        publish(svc, key, {"outbox": {outbox}} if outbox else None)
    elif svc.events:
        publish(svc, key, svc.requests.get(key))       # what the first delivery may have left
    return created


def mark_launched(svc: "Service", item: dict, claimer: str, job_name: str) -> dict | None:
    """CLAIMED -> LAUNCHED ("Request Launched"), with the time from upload to launch."""
    now = svc.clock()
    written = svc.requests.mark_launched(item["request_key"], claimer, job_name, now,
                                         event(svc, lc.REQUEST_LAUNCHED, item, now, key_parts=[job_name], job_name=job_name))
    if written:
        svc.telemetry.count("RequestsLaunched")
        age = _age_s(item.get("created_at"), now)
        if age is not None:
            svc.telemetry.seconds("UploadToLaunchTime", age)
        publish(svc, item["request_key"], written, quiet=True)
    return written


def fail_claimed(svc: "Service", item: dict, claimer: str, reason: str, fallback: str) -> dict | None:
    """CLAIMED -> FAILED ("Request Failed"): the request can never run."""
    now = svc.clock()
    written = svc.requests.fail_claimed(item["request_key"], claimer, reason, now,
                                        event(svc, lc.REQUEST_FAILED, item, now, key_parts=["claim"], reason=reason))
    if written:
        svc.telemetry.count("RequestsFailed", ReasonClass=reason_class(reason, fallback))
        publish(svc, item["request_key"], written, quiet=True)
    return written


def fail_or_retry(svc: "Service", item: dict, job_name: str, reason: str, fallback: str) -> dict | None:
    """LAUNCHED in the job -> PENDING ("Request Retried", the next attempt's number) or FAILED."""
    now, attempt = svc.clock(), lc.attempt_of(item)
    retry = event(svc, lc.REQUEST_RETRIED, item, now, attempt=attempt + 1, job_name=job_name, reason=reason)
    fail = event(svc, lc.REQUEST_FAILED, item, now, key_parts=[job_name], job_name=job_name, reason=reason)
    written = svc.requests.fail_or_retry(item["request_key"], job_name, reason, svc.settings.max_retries, now, retry, fail)
    if written:
        cls = reason_class(reason, fallback)
        svc.telemetry.count("RequestsRetried" if written["status"] == PENDING else "RequestsFailed", ReasonClass=cls)
    return written


@dataclass(frozen=True)
class Settled:
    outcome: str          # completed | needs_review | quality_retried | unchanged (the write lost: a redelivery)
    register: bool        # the model goes into the models table (retrained ones do not)
    quality: Quality
    written: dict | None


def settle(svc: "Service", item: dict, raw_quality: Any, job_name: str | None = None) -> Settled:
    """A trained model for ``item``: COMPLETED ("Model Ready"), NEEDS_REVIEW ("Model Needs
    Review") or, when the task asked for on_quality_fail=retry and retrains remain, PENDING
    with another seed and step count ("Request Retried"). ``job_name`` from a job's end (then
    only a request of that job settles); None from the task's own artifact."""
    quality, task, key, now = read_quality(raw_quality), json.loads(item["task"]), item["request_key"], svc.clock()
    hp, job = svc.settings.job_hyperparameters, job_name or item.get("job_name")
    data = {"verdict": quality.verdict, "scores": quality.scores, "reasons": list(quality.reasons) or None}
    retrains = int(item.get("quality_retries") or 0)
    if (quality.failed and task_setting(task, hp, "on_quality_fail", "keep") == "retry"
            and retrains < svc.settings.max_quality_retries):
        attempt = lc.attempt_of(item)
        new_task, record = retrain(task, hp, quality, key, attempt)
        reason = failure_reason(quality)
        outbox = event(svc, lc.REQUEST_RETRIED, item, now, attempt=attempt + 1, job_name=job, reason=reason, **data)
        written = svc.requests.retry_for_quality(key, job_name, new_task, reason, json.dumps(record, sort_keys=True),
                                                 svc.settings.max_quality_retries, now, outbox)
        if written:
            svc.telemetry.count("RequestsRetried", ReasonClass="quality")
            svc.telemetry.count("QualityVerdicts", Verdict=quality.verdict)
        return Settled("quality_retried" if written else "unchanged", False, quality, written)
    status = NEEDS_REVIEW if quality.failed else COMPLETED
    kind = lc.MODEL_NEEDS_REVIEW if quality.failed else lc.MODEL_READY
    outbox = event(svc, kind, item, now, key_parts=[job or ""], job_name=job, model_uri=task.get("output_uri"),
                   reason=failure_reason(quality) if quality.failed else None, **data)
    written = svc.requests.complete(key, now, job_name, status=status, verdict=quality.verdict, outbox=outbox)
    if written:
        svc.telemetry.count("RequestsNeedingReview" if quality.failed else "RequestsCompleted")
        svc.telemetry.count("QualityVerdicts", Verdict=quality.verdict)
        age = _age_s(item.get("created_at"), now)
        if age is not None:
            svc.telemetry.seconds("UploadToReadyTime", age)
    register = bool(written) or job_name is not None or item.get("status") in SETTLED
    return Settled(status.lower() if written else "unchanged", register, quality, written)


def record_preview(svc: "Service", bucket: str, key: str) -> str:
    """The first preview grid of a request's current job landed in the synced checkpoints:
    "Preview Ready" with its URI ('recorded'); later ones and other keys change nothing."""
    match = PREVIEW_KEY.match(key)
    if bucket != svc.settings.bucket or not match:
        return "ignored"
    job, task_id = match["job"], match["task"]
    items = [i for i in svc.requests.by_job(job) if i.get("task") and json.loads(i["task"]).get("task_id") == task_id]
    if not items:
        return "unknown"                 # not a request of ours, or its job is over
    item = items[0]
    if item.get("preview_job") == job:   # this job's first preview is already recorded
        publish(svc, item["request_key"], item)
        return "duplicate"
    now, uri = svc.clock(), f"s3://{bucket}/{key}"
    written = svc.requests.note_preview(item["request_key"], job, uri, now, event(
        svc, lc.PREVIEW_READY, item, now, key_parts=[job], job_name=job, preview_uri=uri, preview_step=int(match["step"])))
    if written:
        svc.telemetry.count("PreviewsReady")
        age = _age_s(item.get("created_at"), now)
        if age is not None:
            svc.telemetry.seconds("UploadToPreviewTime", age)
    publish(svc, item["request_key"], written or item)
    return "recorded" if written else "duplicate"


def observe_pending(svc: "Service") -> tuple[int, float]:
    """The launcher's gauge after its run: requests still PENDING and the oldest one's age."""
    count, oldest = svc.requests.pending_summary()
    age = _age_s(oldest, svc.clock()) or 0.0
    svc.telemetry.gauge("PendingRequests", count)
    svc.telemetry.gauge("OldestPendingAge", age, SECONDS)
    return count, age
