"""DynamoDB adapters for the `requests` queue and the `models` registry (receive their client).

requests: key `request_key` = "<user_id>/<request_id>"; status PENDING -> CLAIMED -> LAUNCHED
-> COMPLETED | NEEDS_REVIEW | FAILED (FAILED -> never again; LAUNCHED -> PENDING while retries
remain, or when a model that failed the quality gate is retrained). Index `by-status` (status,
updated_at) finds work; index `by-job` (job_name) finds a job's requests. Every transition is
one conditional write: Lambdas run concurrently and events arrive more than once, so the
condition, not the caller, decides who wins.

Outbox: a transition may carry its lifecycle event (fanout/lifecycle.py, encoded). It is added
to the item's `outbox` string set in the same write, with `outbox_at`, so the event exists
exactly when the transition committed; the publisher deletes it once EventBridge took it. A
string set vanishes when its last member goes, and `outbox_at` with it, so the sparse index
`by-outbox` holds only items whose events wait: what the scheduled launcher re-publishes.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

PENDING, CLAIMED, LAUNCHED, COMPLETED, FAILED = "PENDING", "CLAIMED", "LAUNCHED", "COMPLETED", "FAILED"
NEEDS_REVIEW = "NEEDS_REVIEW"          # trained, but the model failed its quality gate
STATUS_INDEX, JOB_INDEX, OUTBOX_INDEX = "by-status", "by-job", "by-outbox"
MAX_REASON = 1000   # characters of a stored reason: items stay far below DynamoDB's 400 KB
_ser, _de = TypeSerializer(), TypeDeserializer()


def _item(values: dict[str, Any]) -> dict:
    return {k: _ser.serialize(v) for k, v in values.items() if v is not None}


def _plain(item: dict) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def _put_new(client, table: str, item: dict[str, Any], key_attribute: str) -> bool:
    """PutItem only where no item has this key yet; False when one already had it."""
    try:
        client.put_item(TableName=table, Item=_item(item), ConditionExpression=f"attribute_not_exists({key_attribute})")
        return True
    except ClientError as exc:
        if _lost_race(exc):
            return False
        raise


def _lost_race(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class RequestStore:
    def __init__(self, client, table: str):
        self.client, self.table = client, table

    def _update(self, key: str, update: str, condition: str, values: dict[str, Any],
                outbox: str | None = None) -> dict[str, Any] | None:
        """One conditional UpdateItem: the item as written, or None when the condition lost
        (someone else won). ``outbox``: an encoded event committed with the transition."""
        if outbox is not None:
            # every transition has a SET clause; the event joins the set in the same write
            update = update.replace("SET ", "SET outbox_at = :outbox_at, ", 1) + " ADD outbox :outbox"
            values = {**values, ":outbox": {outbox}, ":outbox_at": values[":now"]}
        names = {"#s": "status"} if "#s" in update + condition else {}
        try:
            found = self.client.update_item(
                TableName=self.table, Key=_item({"request_key": key}), UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeValues=_item(values), ReturnValues="ALL_NEW",
                **({"ExpressionAttributeNames": names} if names else {}))
            return _plain(found["Attributes"])
        except ClientError as exc:
            if _lost_race(exc):
                return None
            raise

    def put_new(self, user_id: str, request_id: str, task: dict, now: str,
                status: str = PENDING, reason: str | None = None, outbox: str | None = None) -> bool:
        """A new request; False when it exists. Race: S3 delivers an upload event more than
        once (and retries failed invocations); without the condition a late duplicate would
        reset a LAUNCHED or COMPLETED request to PENDING and train it twice."""
        item = {"request_key": f"{user_id}/{request_id}", "user_id": user_id, "request_id": request_id,
                "status": status, "task": json.dumps(task, sort_keys=True), "retries": 0, "reason": reason[:MAX_REASON] if reason else reason, "created_at": now, "updated_at": now}
        if outbox is not None:
            item.update(outbox={outbox}, outbox_at=now)
        return _put_new(self.client, self.table, item, "request_key")

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.client.get_item(TableName=self.table, Key=_item({"request_key": key}), ConsistentRead=True)
        return _plain(found["Item"]) if "Item" in found else None

    def _query(self, index: str, condition: str, values: dict, names: dict | None = None,
               limit: int | None = None, projection: str | None = None) -> Iterator[dict[str, Any]]:
        kwargs = {"TableName": self.table, "IndexName": index, "KeyConditionExpression": condition,
                  "ExpressionAttributeValues": _item(values), **({"ExpressionAttributeNames": names} if names else {}),
                  **({"ProjectionExpression": projection} if projection else {})}
        count = 0
        for page in self.client.get_paginator("query").paginate(**kwargs):
            for raw in page.get("Items", []):
                yield _plain(raw)
                count += 1
                if limit is not None and count >= limit:
                    return

    def claimable(self, stale_before: str, limit: int) -> list[dict[str, Any]]:
        """Oldest PENDING requests, then CLAIMED ones whose launcher died (claim older than
        ``stale_before``). The index is eventually consistent: `claim` re-checks."""
        names = {"#s": "status"}
        found = list(self._query(STATUS_INDEX, "#s = :s", {":s": PENDING}, names, limit))
        if len(found) < limit:
            found += self._query(STATUS_INDEX, "#s = :s AND updated_at < :t",
                                 {":s": CLAIMED, ":t": stale_before}, names, limit - len(found))
        return found

    def by_job(self, job_name: str) -> list[dict[str, Any]]:
        return list(self._query(JOB_INDEX, "job_name = :j", {":j": job_name}))

    def claim(self, key: str, claimer: str, now: str, stale_before: str) -> bool:
        """PENDING (or stale CLAIMED) -> CLAIMED by ``claimer``. Race: two launch_pending runs
        (schedule and stream) read the same PENDING item; only one claim succeeds, so a
        request ends up in exactly one job."""
        return self._update(key, "SET #s = :claimed, claimed_by = :me, updated_at = :now",
                            "#s = :pending OR (#s = :claimed AND updated_at < :stale)",
                            {":claimed": CLAIMED, ":pending": PENDING, ":me": claimer, ":now": now, ":stale": stale_before})

    def note_launching(self, key: str, claimer: str, job_name: str, now: str) -> bool:
        """CLAIMED by us: remember the job we are about to create. Race: we may die (or time
        out) after CreateTrainingJob succeeded and before mark_launched; whoever takes the
        stale claim over finds this name, sees the job exists and records it instead of
        training the request in a second, differently batched job."""
        return self._update(key, "SET launching_job = :job, updated_at = :now", "#s = :claimed AND claimed_by = :me",
                            {":job": job_name, ":now": now, ":claimed": CLAIMED, ":me": claimer})

    def mark_launched(self, key: str, claimer: str, job_name: str, now: str, outbox: str | None = None) -> dict | None:
        """CLAIMED by us -> LAUNCHED in ``job_name``. Race: our claim went stale and another
        launcher re-claimed the request; its record must not be overwritten by ours."""
        # launching_job goes: once recorded, a later retry of this request is a new launch
        return self._update(key, "SET #s = :launched, job_name = :job, updated_at = :now, launched_at = :now "
                            "REMOVE launching_job",
                            "#s = :claimed AND claimed_by = :me",
                            {":launched": LAUNCHED, ":job": job_name, ":now": now, ":claimed": CLAIMED, ":me": claimer},
                            outbox)

    def release(self, key: str, claimer: str, reason: str, now: str) -> bool:
        """CLAIMED by us -> PENDING with the reason (launch failed). Race: never release a
        claim that has since passed to another launcher."""
        return self._update(key, "SET #s = :pending, reason = :why, updated_at = :now",
                            "#s = :claimed AND claimed_by = :me",
                            {":pending": PENDING, ":why": reason[:1000], ":now": now, ":claimed": CLAIMED, ":me": claimer})

    def fail_claimed(self, key: str, claimer: str, reason: str, now: str, outbox: str | None = None) -> dict | None:
        """CLAIMED by us -> FAILED (the request can never run, e.g. no images). Race as release."""
        return self._update(key, "SET #s = :failed, reason = :why, updated_at = :now",
                            "#s = :claimed AND claimed_by = :me",
                            {":failed": FAILED, ":why": reason[:1000], ":now": now, ":claimed": CLAIMED, ":me": claimer},
                            outbox)

    def note_launched(self, key: str, reason: str, now: str) -> bool:
        """LAUNCHED: record why something about it was refused (an artifact whose manifest
        does not vouch for it); the job's end still decides. Race: only while LAUNCHED, so a
        late event cannot overwrite the reason of a request completed or failed meanwhile."""
        return self._update(key, "SET reason = :why, updated_at = :now", "#s = :launched",
                            {":why": reason[:MAX_REASON], ":now": now, ":launched": LAUNCHED})

    def complete(self, key: str, now: str, job_name: str | None = None, *, status: str = COMPLETED,
                 verdict: str | None = None, outbox: str | None = None) -> dict | None:
        """LAUNCHED -> COMPLETED (or NEEDS_REVIEW: trained, the quality gate failed it), with
        the model's quality verdict. Race: the task's artifact event and its job's state-change
        event both complete it; the second write finds it settled and does nothing. With
        ``job_name``, a late event of an older job cannot complete a retried request."""
        condition = "#s = :launched" + (" AND job_name = :job" if job_name else "")
        values = {":done": status, ":now": now, ":launched": LAUNCHED, ":job": job_name, ":verdict": verdict}
        update = "SET #s = :done, updated_at = :now, completed_at = :now" + (", verdict = :verdict" if verdict else "")
        return self._update(key, update, condition, values, outbox)

    def fail_or_retry(self, key: str, job_name: str, reason: str, max_retries: int, now: str,
                      retry_outbox: str | None = None, fail_outbox: str | None = None) -> dict | None:
        """LAUNCHED in ``job_name`` -> PENDING (retries left) or FAILED: the item as written
        (its `status` says which), None if already moved. Race: EventBridge may deliver a job's
        state change twice; the job_name/LAUNCHED condition makes the second delivery a no-op
        instead of a second retry."""
        base = {":why": reason[:1000], ":now": now, ":launched": LAUNCHED, ":job": job_name}
        return (self._update(key, "SET #s = :pending, reason = :why, updated_at = :now, retries = retries + :one REMOVE job_name",
                             "#s = :launched AND job_name = :job AND retries < :max",
                             {**base, ":pending": PENDING, ":one": 1, ":max": max_retries}, retry_outbox)
                or self._update(key, "SET #s = :failed, reason = :why, updated_at = :now",
                                "#s = :launched AND job_name = :job", {**base, ":failed": FAILED}, fail_outbox))

    def retry_for_quality(self, key: str, job_name: str | None, task: dict, reason: str, attempt: str,
                          max_quality_retries: int, now: str, outbox: str | None = None) -> dict | None:
        """LAUNCHED (in ``job_name`` when given) -> PENDING with the retrained ``task`` (new seed
        and steps) and this attempt's record (JSON) appended to `attempts`. Race as complete:
        the artifact and job events both see the failed model; one retrain only, and never more
        than ``max_quality_retries``."""
        condition = ("#s = :launched" + (" AND job_name = :job" if job_name else "")
                     + " AND (attribute_not_exists(quality_retries) OR quality_retries < :max)")
        return self._update(
            key, "SET #s = :pending, task = :task, reason = :why, updated_at = :now, "
            "quality_retries = if_not_exists(quality_retries, :zero) + :one, "
            "attempts = list_append(if_not_exists(attempts, :none), :attempt) REMOVE job_name",
            condition, {":pending": PENDING, ":task": json.dumps(task, sort_keys=True), ":why": reason[:MAX_REASON],
                        ":now": now, ":zero": 0, ":one": 1, ":none": [], ":attempt": [attempt], ":launched": LAUNCHED,
                        ":job": job_name, ":max": max_quality_retries}, outbox)

    def note_preview(self, key: str, job_name: str, uri: str, now: str, outbox: str | None = None) -> dict | None:
        """LAUNCHED in ``job_name``: its first preview is at ``uri``. Race: every preview image
        of every step notifies; only the first one of each job (attempt) is recorded."""
        return self._update(key, "SET preview_job = :job, preview_uri = :uri, preview_at = :now",
                            "#s = :launched AND job_name = :job AND (attribute_not_exists(preview_job) OR preview_job <> :job)",
                            {":job": job_name, ":uri": uri, ":now": now, ":launched": LAUNCHED}, outbox)

    # -- outbox and gauges ------------------------------------------------------------------

    def events_published(self, key: str, published: set[str], pending: set[str]) -> None:
        """Drop published events from the outbox. When they were all it held (``pending``), the
        marker goes in the same write; if one was added meanwhile, that one's writer (or the
        sweep) still has to publish it, so only the published members go."""
        if not published:
            return
        values = _item({":p": published})
        try:
            if published == pending:
                self.client.update_item(TableName=self.table, Key=_item({"request_key": key}),
                                        UpdateExpression="DELETE outbox :p REMOVE outbox_at",
                                        ConditionExpression="outbox = :p", ExpressionAttributeValues=values)
                return
        except ClientError as exc:
            if not _lost_race(exc):
                raise
        self.client.update_item(TableName=self.table, Key=_item({"request_key": key}),
                                UpdateExpression="DELETE outbox :p", ExpressionAttributeValues=values)

    def drop_outbox_marker(self, key: str) -> None:
        """`outbox_at` of an item whose outbox is already empty (it would stay in the index)."""
        try:
            self.client.update_item(TableName=self.table, Key=_item({"request_key": key}), UpdateExpression="REMOVE outbox_at",
                                    ConditionExpression="attribute_not_exists(outbox)")
        except ClientError as exc:
            if not _lost_race(exc):
                raise

    def with_pending_events(self, before: str, limit: int) -> list[str]:
        """Keys of items whose events have waited since before ``before`` (the sparse index)."""
        keys: list[str] = []
        pages = self.client.get_paginator("scan").paginate(
            TableName=self.table, IndexName=OUTBOX_INDEX, FilterExpression="outbox_at < :t",
            ExpressionAttributeValues=_item({":t": before}))
        for page in pages:
            keys += [_plain(raw)["request_key"] for raw in page.get("Items", [])]
            if len(keys) >= limit:
                break
        return keys[:limit]

    def pending_summary(self) -> tuple[int, str | None]:
        """(how many requests are PENDING, the oldest one's created_at): the launcher's gauge.
        created_at, not updated_at: a request handed back after a failed launch keeps its age."""
        count, oldest = 0, None
        for item in self._query(STATUS_INDEX, "#s = :s", {":s": PENDING}, {"#s": "status"}, projection="created_at"):
            count += 1
            created = item.get("created_at")
            if created and (oldest is None or created < oldest):
                oldest = created
        return count, oldest


class ModelStore:
    """`models`: (user_id, model_id) -> artifact URIs, base model, job, created."""

    def __init__(self, client, table: str):
        self.client, self.table = client, table

    def register(self, user_id: str, model_id: str, now: str, **fields: Any) -> bool:
        """Record a trained model; False when it was already there. Race: the artifact event
        and the job's state change both register a model; the first record (and its created
        time) stays."""
        item = {"user_id": user_id, "model_id": model_id, "created_at": now, **fields}
        return _put_new(self.client, self.table, item, "model_id")

    def get(self, user_id: str, model_id: str) -> dict[str, Any] | None:
        """One model's item (the serving container resolves a request's model id with it)."""
        found = self.client.get_item(TableName=self.table, Key=_item({"user_id": user_id, "model_id": model_id}))
        return _plain(found["Item"]) if "Item" in found else None

    def models_of(self, user_id: str) -> list[dict[str, Any]]:
        found = self.client.query(TableName=self.table, KeyConditionExpression="user_id = :u",
                                  ExpressionAttributeValues=_item({":u": user_id}))
        return [_plain(i) for i in found.get("Items", [])]
