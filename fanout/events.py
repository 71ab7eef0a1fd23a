"""Parsing the AWS events the handlers receive into plain values (pure, never raises on input).

S3 notifications arrive directly (`Records[].s3`), through SQS (`Records[].body` holding an S3
notification), or through EventBridge (`detail.bucket.name`, `detail.object.key`). Every item
carries an id so a handler can report per-item failures (`batchItemFailures` for SQS). A record
that cannot be read (no `s3.object.key`, an SQS body of `null`, `"detail": null`) becomes a
`BadRecord` in its place: the records after it are still read, and the handler reports it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import unquote_plus

from fanout.errors import EventError

REQUEST_KEY = re.compile(r"^requests/(?P<user>[^/]+)/(?P<request>[^/]+)/request\.json$")
# Only the task's own manifest (the top of its output_uri), not one an export writes in a subfolder.
ARTIFACT_KEY = re.compile(r"^models/(?P<user>[^/]+)/(?P<request>[^/]+)/manifest\.json$")
# A task's preview grid, as SageMaker syncs the checkpoints (train/previews.py writes
# previews/step-<N>/grid.png; the .tmp-* folder it renames from does not match).
PREVIEW_KEY = re.compile(r"^jobs/(?P<job>[^/]+)/checkpoints/(?P<task>[^/]+)/previews/step-(?P<step>[0-9]+)/grid\.png$")
TERMINAL_STATES = ("Completed", "Failed", "Stopped")
CREATED, REMOVED, OTHER = "created", "removed", "other"
JOB_STATE_DETAIL_TYPE = "SageMaker Training Job State Change"


@dataclass(frozen=True)
class S3Object:
    item_id: str        # SQS messageId, S3 sequencer or EventBridge id: for failure reports
    bucket: str
    key: str
    change: str = CREATED   # CREATED, REMOVED (ObjectRemoved:*, "Object Deleted") or OTHER


@dataclass(frozen=True)
class BadRecord:
    """A record no handler can act on, and why (reported as a per-item failure)."""

    item_id: str
    reason: str


def _change(event_name: Any) -> str:
    """ObjectCreated:* / ObjectRemoved:* / LifecycleExpiration:* (a missing name reads as created)."""
    if event_name is None:
        return CREATED
    name = str(event_name)
    if name.startswith("ObjectCreated:"):
        return CREATED
    if name.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
        return REMOVED
    return OTHER


def _dig(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]..., or None where a level is missing or not an object."""
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _str_at(value: Any, *path: str) -> str | None:
    """The non-empty string at ``path``, or None."""
    found = _dig(value, *path)
    return found if isinstance(found, str) and found else None


def _from_s3_record(record: Any, n: int, item_id: str | None) -> S3Object | BadRecord:
    key, bucket = _str_at(record, "s3", "object", "key"), _str_at(record, "s3", "bucket", "name")
    item_id = item_id or _str_at(record, "s3", "object", "sequencer")
    if not key or not bucket:
        return BadRecord(item_id or f"record-{n}", f"Records[{n}]: not an S3 notification record "
                                                   "(s3.bucket.name and s3.object.key must be strings)")
    key = unquote_plus(key)                      # S3 notifications URL-encode keys
    return S3Object(item_id or f"{n}:{key}", bucket, key, _change(record.get("eventName")))


def _from_sqs_record(record: Mapping[str, Any], n: int) -> Iterator[S3Object | BadRecord]:
    message_id = record.get("messageId")
    item_id = message_id if isinstance(message_id, str) and message_id else f"record-{n}"
    try:
        body = json.loads(record["body"]) if isinstance(record["body"], str) else None
    except ValueError:
        body = None
    if isinstance(body, Mapping) and body.get("Event") == "s3:TestEvent":
        return                                   # S3's check that the queue is reachable
    records = body.get("Records") if isinstance(body, Mapping) else None
    if not isinstance(records, list) or not records:
        yield BadRecord(item_id, f"SQS message {item_id}: body is not an S3 notification (JSON with a 'Records' list)")
        return
    for record_in_body in records:
        yield _from_s3_record(record_in_body, n, item_id)


def _from_eventbridge(event: Mapping[str, Any]) -> S3Object | BadRecord:
    item_id = str(event.get("id") or "eventbridge")
    bucket, key = _str_at(event, "detail", "bucket", "name"), _str_at(event, "detail", "object", "key")
    if not key or not bucket:
        return BadRecord(item_id, f"EventBridge event {item_id}: detail.bucket.name and detail.object.key must be strings")
    change = {"Object Created": CREATED, "Object Deleted": REMOVED}.get(event.get("detail-type"), OTHER)
    return S3Object(item_id, bucket, key, change)   # EventBridge keys are not URL-encoded


def s3_objects(event: Any) -> Iterator[S3Object | BadRecord]:
    """Every S3 object an event names, whichever way it was delivered; unreadable records
    come out as BadRecord in their place."""
    if not isinstance(event, Mapping):
        yield BadRecord("event", f"the event is not a JSON object (got {type(event).__name__})")
        return
    if event.get("source") == "aws.s3" or "detail-type" in event:
        yield _from_eventbridge(event)
        return
    records = event.get("Records")
    if not isinstance(records, list):
        yield BadRecord("event", "the event has no 'Records' list and is not an EventBridge S3 event")
        return
    for n, record in enumerate(records):
        if isinstance(record, Mapping) and "body" in record:      # SQS wrapping an S3 notification
            yield from _from_sqs_record(record, n)
        else:
            yield _from_s3_record(record, n, None)


def delivered_by_sqs(event: Any) -> bool:
    """SQS reads `batchItemFailures`; direct S3 and EventBridge invocations are asynchronous
    and ignore it (only a raised error makes Lambda retry them and then use the function's
    on-failure destination)."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    return isinstance(records, list) and any(isinstance(r, Mapping) and r.get("eventSource") == "aws:sqs"
                                             for r in records)


@dataclass(frozen=True)
class JobStateChange:
    job_name: str
    status: str
    failure_reason: str
    checkpoint_uri: str | None
    model_artifacts: str | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATES


def job_state_change(event: Any) -> JobStateChange:
    """EventBridge "SageMaker Training Job State Change" (detail = DescribeTrainingJob fields).
    Raises EventError for anything else (also `"detail": null`)."""
    detail = _dig(event, "detail")
    name = _str_at(detail, "TrainingJobName")
    if not name:
        raise EventError(f"not a {JOB_STATE_DETAIL_TYPE} event: detail.TrainingJobName is missing or not a "
                         f"string (detail-type {_dig(event, 'detail-type')!r})")
    return JobStateChange(
        job_name=name,
        status=_str_at(detail, "TrainingJobStatus") or "",
        failure_reason=_str_at(detail, "FailureReason") or "",
        checkpoint_uri=_str_at(detail, "CheckpointConfig", "S3Uri"),
        model_artifacts=_str_at(detail, "ModelArtifacts", "S3ModelArtifacts"),
    )


def failures(failed_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """The partial-batch response Lambda understands for SQS sources."""
    return {"batchItemFailures": [{"itemIdentifier": i} for i in dict.fromkeys(failed_ids)]}
