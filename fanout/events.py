"""Parsing the AWS events the handlers receive into plain values (pure).

S3 notifications arrive directly (`Records[].s3`), through SQS (`Records[].body` holding an S3
notification), or through EventBridge (`detail.bucket.name`, `detail.object.key`). Every item
carries an id so a handler can report per-item failures (`batchItemFailures` for SQS).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import unquote_plus

REQUEST_KEY = re.compile(r"^requests/(?P<user>[^/]+)/(?P<request>[^/]+)/request\.json$")
ARTIFACT_KEY = re.compile(r"^models/(?P<user>[^/]+)/(?P<request>[^/]+)/(?:.+/)?manifest\.json$")
TERMINAL_STATES = ("Completed", "Failed", "Stopped")


@dataclass(frozen=True)
class S3Object:
    item_id: str        # SQS messageId, S3 sequencer or EventBridge id: for failure reports
    bucket: str
    key: str


def _from_s3_records(records: Any, item_id: str | None) -> Iterator[S3Object]:
    for n, record in enumerate(records or []):
        s3 = record.get("s3") or {}
        if not s3:
            continue
        key = unquote_plus(s3["object"]["key"])       # S3 notifications URL-encode keys
        yield S3Object(item_id or s3["object"].get("sequencer") or f"{n}:{key}", s3["bucket"]["name"], key)


def s3_objects(event: Mapping[str, Any]) -> Iterator[S3Object]:
    """Every S3 object an event names, whichever way it was delivered."""
    if event.get("detail-type") == "Object Created":
        detail = event["detail"]
        yield S3Object(event.get("id", detail["object"]["key"]), detail["bucket"]["name"], detail["object"]["key"])
        return
    for record in event.get("Records", []):
        if "body" in record:                                   # SQS wrapping an S3 notification
            try:
                body = json.loads(record["body"])
            except ValueError:
                body = {}
            yield from _from_s3_records(body.get("Records"), record.get("messageId"))
        else:
            yield from _from_s3_records([record], None)


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


def job_state_change(event: Mapping[str, Any]) -> JobStateChange:
    """EventBridge "SageMaker Training Job State Change" (detail = DescribeTrainingJob fields)."""
    detail = event.get("detail", {})
    if "TrainingJobName" not in detail:
        raise ValueError("not a SageMaker Training Job State Change event (detail.TrainingJobName missing)")
    return JobStateChange(
        job_name=detail["TrainingJobName"],
        status=detail.get("TrainingJobStatus", ""),
        failure_reason=detail.get("FailureReason", ""),
        checkpoint_uri=(detail.get("CheckpointConfig") or {}).get("S3Uri"),
        model_artifacts=(detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
    )


def failures(failed_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """The partial-batch response Lambda understands for SQS sources."""
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed_ids]}
