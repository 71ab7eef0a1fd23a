"""Lambda entry points: parse the event, call one function in fanout.service, return.

Settings come from FANOUT_* environment variables (docs/fanout.md). Each handler builds its
Service once per container (module-level cache) so warm invocations reuse clients. Per-item
failures are reported (`batchItemFailures`) instead of failing the whole batch, so SQS
redelivers only what failed (and, after the queue's maxReceiveCount, moves it to its DLQ).
Direct S3 and EventBridge invocations are asynchronous and ignore that answer: there a handler
raises after every item was tried, so Lambda retries the event and then hands it to the
function's on-failure destination. A request that cannot be accepted is not a failure here:
register_upload records it FAILED with the reason. Every function below is idempotent under
redelivery, so items that already succeeded answer `duplicate` on a retry.

Each transition publishes its lifecycle event (FANOUT_EVENT_BUS) after its write committed; an
event EventBridge would not take fails the record like any other error (the event waits in
the request's outbox for the redelivery). Each invocation ends by writing its metrics as
CloudWatch embedded-metric-format lines (fanout/telemetry.py).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from fanout.errors import EventError
from fanout.events import CREATED, REMOVED, BadRecord, delivered_by_sqs, failures, job_state_change, s3_objects
from fanout.outcomes import record_preview
from fanout.service import Service, launch_pending as _launch_pending, record_job_state, record_task_artifact, register_upload
from fanout.settings import Settings

log = logging.getLogger("fanout")
_service: Service | None = None


def service() -> Service:
    global _service
    if _service is None:
        _service = Service.from_settings(Settings.from_env())
    return _service


def _each_object(event: dict, action) -> dict[str, Any]:
    results, failed, problems = {}, [], []
    for obj in s3_objects(event):
        if isinstance(obj, BadRecord):     # reported, and the records after it still run
            log.error("malformed record %s: %s", obj.item_id, obj.reason)
            failed.append(obj.item_id)
            problems.append(obj.reason)
            continue
        if obj.change != CREATED:          # a deleted request.json or manifest changes nothing
            results[obj.key] = "deleted" if obj.change == REMOVED else "ignored"
            continue
        try:
            results[obj.key] = action(service(), obj.bucket, obj.key)
        except Exception as exc:           # one bad item must not fail (and redeliver) the others
            log.exception("failed on s3://%s/%s", obj.bucket, obj.key)
            failed.append(obj.item_id)
            problems.append(f"s3://{obj.bucket}/{obj.key}: {type(exc).__name__}: {exc}")
    if failed and not delivered_by_sqs(event):
        # asynchronous invocation: batchItemFailures would be dropped; a raise is retried
        raise EventError(f"{len(failed)} record(s) failed, the others were processed: " + "; ".join(problems)[:2000])
    return {"results": results, **failures(failed)}


def _flush_metrics() -> None:
    """This invocation's metrics as EMF lines; never what fails an invocation."""
    if _service is not None:
        try:
            _service.telemetry.flush()
        except Exception:                  # a metric lost is logged, the work stays done
            log.exception("metrics were not written")


def _flushing_metrics(handler):
    """``handler``, then this invocation's metrics written, whether it returned or raised."""
    @functools.wraps(handler)
    def wrapper(event: dict, context: Any = None) -> dict[str, Any]:
        try:
            return handler(event, context)
        finally:
            _flush_metrics()
    return wrapper


@_flushing_metrics
def on_upload(event: dict, context: Any = None) -> dict[str, Any]:
    """S3 ObjectCreated of requests/<user>/<request>/request.json -> one PENDING request."""
    return _each_object(event, register_upload)


@_flushing_metrics
def launch_pending(event: dict, context: Any = None) -> dict[str, Any]:
    """Schedule or DynamoDB stream: the event only wakes us; the queue is the table."""
    return _launch_pending(service())


@_flushing_metrics
def on_job_state_change(event: dict, context: Any = None) -> dict[str, Any]:
    """EventBridge "SageMaker Training Job State Change" -> per-task outcomes."""
    return record_job_state(service(), job_state_change(event))


@_flushing_metrics
def on_task_artifact(event: dict, context: Any = None) -> dict[str, Any]:
    """S3 ObjectCreated of models/<user>/<request>/manifest.json -> COMPLETED at once."""
    return _each_object(event, record_task_artifact)


@_flushing_metrics
def on_preview(event: dict, context: Any = None) -> dict[str, Any]:
    """S3 ObjectCreated of jobs/<job>/checkpoints/<task>/previews/step-<N>/grid.png -> the
    request's first preview of this job recorded ("Preview Ready")."""
    return _each_object(event, record_preview)
