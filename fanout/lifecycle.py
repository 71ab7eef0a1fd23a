"""Lifecycle events the SaaS app subscribes to: one per request state change (pure).

Published to the EventBridge bus FANOUT_EVENT_BUS (unset: none) with Source `fanout` and one
of the DETAIL_TYPES below. Each event is built *before* the conditional write that makes its
transition and is stored in that same write (the item's `outbox`, fanout/store.py), so a
transition that loses its condition has no event, and one that commits always has its event
kept until it is published (fanout/publisher.py). The detail's `event_id` is derived from the
request and the transition, and the stored event is what every redelivery re-publishes, so
consumers deduplicate on it. docs/fanout.md#lifecycle-events shows an example of each type.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

SOURCE = "fanout"
REQUEST_ACCEPTED = "Request Accepted"
REQUEST_LAUNCHED = "Request Launched"
PREVIEW_READY = "Preview Ready"
MODEL_READY = "Model Ready"
MODEL_NEEDS_REVIEW = "Model Needs Review"
REQUEST_FAILED = "Request Failed"
REQUEST_RETRIED = "Request Retried"
DETAIL_TYPES = (REQUEST_ACCEPTED, REQUEST_LAUNCHED, PREVIEW_READY, MODEL_READY, MODEL_NEEDS_REVIEW,
                REQUEST_FAILED, REQUEST_RETRIED)
# EventBridge refuses an entry over 256 KB. Events also wait in the request's DynamoDB item
# (400 KB, the task included) until published, so each is kept far below both.
MAX_ENTRY_BYTES = 256 * 1024
MAX_EVENT_BYTES = 64 * 1024
MAX_REASON = 1000          # the store's limit for a reason (fanout/store.py MAX_REASON)
_TIME_BYTES = 14           # what EventBridge counts for an entry's Time


@dataclass(frozen=True)
class Event:
    detail_type: str
    detail: dict[str, Any]      # always: event_id, request_key, user_id, request_id, attempt, occurred_at

    @property
    def event_id(self) -> str:
        return self.detail["event_id"]

    def encode(self) -> str:
        """The outbox member: compact, key-sorted JSON (the same event encodes the same)."""
        return json.dumps({"detail-type": self.detail_type, "detail": self.detail}, sort_keys=True,
                          separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "Event":
        value = json.loads(text)
        return cls(value["detail-type"], value["detail"])

    def entry(self, bus: str) -> dict[str, Any]:
        """The PutEvents entry (Time: when the transition was committed)."""
        when = dt.datetime.fromisoformat(self.detail["occurred_at"])
        return {"Source": SOURCE, "DetailType": self.detail_type, "EventBusName": bus, "Time": when,
                "Detail": json.dumps(self.detail, sort_keys=True, separators=(",", ":"))}

    @property
    def order(self) -> tuple[str, int]:
        """Publication order of a request's pending events: commit time, then lifecycle rank."""
        return self.detail["occurred_at"], DETAIL_TYPES.index(self.detail_type)


def entry_bytes(event: Event) -> int:
    """The entry's size as EventBridge counts it (Source, DetailType, Detail, Time)."""
    detail = json.dumps(event.detail, sort_keys=True, separators=(",", ":"))
    return len(SOURCE) + len(event.detail_type.encode()) + len(detail.encode()) + _TIME_BYTES


def event_id(request_key: str, detail_type: str, *parts: Any) -> str:
    """Stable per transition: the same request, type and discriminating parts give the same id."""
    return hashlib.sha256(json.dumps([request_key, detail_type, *parts]).encode()).hexdigest()[:32]


def attempt_of(item: Mapping[str, Any]) -> int:
    """The training attempt a request is on: 1, then one more per retry of either kind."""
    return 1 + int(item.get("retries") or 0) + int(item.get("quality_retries") or 0)


def build(detail_type: str, item: Mapping[str, Any], now: str, *, attempt: int | None = None,
          key_parts: Iterable[Any] = (), **fields: Any) -> Event:
    """The event of ``detail_type`` for the request ``item`` (a requests-table item), committed
    at ``now``; ``fields`` (job_name, model_uri, preview_uri, verdict, reason, ...) are added
    where not None. ``key_parts`` tell apart two transitions of one type (attempt, job)."""
    if detail_type not in DETAIL_TYPES:
        raise ValueError(f"unknown detail-type {detail_type!r}; valid: {', '.join(DETAIL_TYPES)}")
    attempt = attempt_of(item) if attempt is None else attempt
    key = item["request_key"]
    detail = {"event_id": event_id(key, detail_type, attempt, *key_parts), "request_key": key,
              "user_id": item["user_id"], "request_id": item["request_id"], "attempt": attempt,
              "occurred_at": now}
    if fields.get("reason"):
        fields["reason"] = str(fields["reason"])[:MAX_REASON]
    detail.update({k: v for k, v in fields.items() if v is not None})
    return fitted(Event(detail_type, detail))


def fitted(event: Event, limit: int = MAX_EVENT_BYTES) -> Event:
    """The event, trimmed to ``limit`` bytes: quality reasons first (the only field that grows
    with its input: a manifest's list), then scores, then the reason; ``trimmed`` names what went."""
    if entry_bytes(event) <= limit:
        return event
    detail, trimmed = dict(event.detail), []
    reasons = list(detail.get("reasons") or [])
    while reasons and entry_bytes(Event(event.detail_type, {**detail, "reasons": reasons, "trimmed": ["reasons"]})) > limit:
        reasons = reasons[: len(reasons) // 2] if len(reasons) > 1 else []
    if "reasons" in detail:
        detail["reasons"] = [str(r)[:MAX_REASON] for r in reasons]
        trimmed.append("reasons")
    for name in ("scores", "reason"):
        if entry_bytes(Event(event.detail_type, {**detail, "trimmed": trimmed})) <= limit:
            break
        if name in detail:
            detail.pop(name)
            trimmed.append(name)
    detail["trimmed"] = trimmed
    return Event(event.detail_type, detail)


def in_order(encoded: Iterable[str]) -> list[Event]:
    """A request's pending outbox members as events, in the order they happened."""
    return sorted((Event.decode(text) for text in encoded), key=lambda e: e.order)


# -- what `make demo` prints: the events a real job's requests would publish ---------------------

def _iso(value: Any, fallback: str) -> str:
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat(timespec="milliseconds")
    return value if isinstance(value, str) and value else fallback


def local_job_events(job_dir: Path, tasks: list[dict], bucket: str = "BUCKET", job_name: str = "fanout-local") -> list[Event]:
    """The lifecycle events the serverless path would publish for a `fanout local` job's tasks
    (the task id standing for the request id), from the job's status files and previews."""
    s3 = Path(job_dir) / "s3"
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    summary = {t.get("task_id"): t for p in sorted((s3 / "output").glob("*/summary.json"))
               for t in _read(p).get("tasks", []) if isinstance(t, dict)}
    events = []
    for task in tasks:
        tid, user = task["task_id"], task.get("user_id") or "user"
        item = {"request_key": f"{user}/{tid}", "user_id": user, "request_id": tid, "retries": 0}
        outcome = summary.get(tid, {})
        status = {"state": outcome.get("outcome"), "error": outcome.get("error"),
                  **_read(s3 / "checkpoints" / tid / "status.json")}
        started = _iso(status.get("started_at"), now)
        events += [build(REQUEST_ACCEPTED, item, started, key_parts=["demo"]),
                   build(REQUEST_LAUNCHED, item, started, key_parts=[job_name], job_name=job_name)]
        grids = sorted((s3 / "checkpoints" / tid / "previews").glob("step-*/grid.png"),
                       key=lambda p: int(p.parent.name.split("-")[-1]))
        if grids:
            uri = f"s3://{bucket}/jobs/{job_name}/checkpoints/{tid}/previews/{grids[0].parent.name}/grid.png"
            events.append(build(PREVIEW_READY, item, started, key_parts=[job_name], job_name=job_name,
                                preview_uri=uri, preview_step=int(grids[0].parent.name.split("-")[-1])))
        finished = _iso(status.get("finished_at"), now)
        quality = status.get("quality") if isinstance(status.get("quality"), dict) else {}
        if status.get("state") == "completed":
            verdict = quality.get("verdict") or "not_evaluated"
            kind = MODEL_NEEDS_REVIEW if verdict == "failed_quality" else MODEL_READY
            events.append(build(kind, item, finished, key_parts=[job_name], job_name=job_name, verdict=verdict,
                                model_uri=f"s3://{bucket}/models/{user}/{tid}/", scores=quality.get("scores"),
                                reasons=quality.get("reasons")))
        else:
            events.append(build(REQUEST_FAILED, item, finished, key_parts=[job_name], job_name=job_name,
                                reason=status.get("error") or "the task did not finish"))
    return events


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def format_events(events: list[Event], example: str = MODEL_READY) -> str:
    """One line per event (type, request, the fields that matter), then one event in full."""
    lines = [f"lifecycle events (EventBridge, source {SOURCE!r}) the serverless path would publish:"]
    for e in events:
        d = e.detail
        extra = " ".join(f"{k}={d[k]}" for k in ("job_name", "preview_uri", "verdict", "model_uri", "reason") if k in d)
        lines.append(f"  {e.detail_type:<18} {d['request_key']:<22} event_id={d['event_id'][:12]}… {extra}"[:200])
    full = next((e for e in events if e.detail_type == example), events[0] if events else None)
    if full:
        lines.append("one in full, as a rule's target receives it under \"detail\":\n"
                     + json.dumps({"source": SOURCE, "detail-type": full.detail_type, "detail": full.detail}, indent=2))
    return "\n".join(lines)
