"""DynamoDB adapters for the `requests` queue and the `models` registry (receive their client).

requests: key `request_key` = "<user_id>/<request_id>"; status PENDING -> CLAIMED -> LAUNCHED
-> COMPLETED | FAILED (FAILED -> never again; LAUNCHED -> PENDING while retries remain).
Index `by-status` (status, updated_at) finds work; index `by-job` (job_name) finds a job's
requests. Every transition is one conditional write: Lambdas run concurrently and events
arrive more than once, so the condition, not the caller, decides who wins.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

PENDING, CLAIMED, LAUNCHED, COMPLETED, FAILED = "PENDING", "CLAIMED", "LAUNCHED", "COMPLETED", "FAILED"
STATUS_INDEX, JOB_INDEX = "by-status", "by-job"
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

    def _update(self, key: str, update: str, condition: str, values: dict[str, Any]) -> bool:
        """One conditional UpdateItem; False when the condition lost (someone else won)."""
        names = {"#s": "status"} if "#s" in update + condition else {}
        try:
            self.client.update_item(TableName=self.table, Key=_item({"request_key": key}), UpdateExpression=update,
                                    ConditionExpression=condition, ExpressionAttributeValues=_item(values),
                                    **({"ExpressionAttributeNames": names} if names else {}))
            return True
        except ClientError as exc:
            if _lost_race(exc):
                return False
            raise

    def put_new(self, user_id: str, request_id: str, task: dict, now: str,
                status: str = PENDING, reason: str | None = None) -> bool:
        """A new request; False when it exists. Race: S3 delivers an upload event more than
        once (and retries failed invocations); without the condition a late duplicate would
        reset a LAUNCHED or COMPLETED request to PENDING and train it twice."""
        item = {"request_key": f"{user_id}/{request_id}", "user_id": user_id, "request_id": request_id,
                "status": status, "task": json.dumps(task, sort_keys=True), "retries": 0, "reason": reason[:MAX_REASON] if reason else reason, "created_at": now, "updated_at": now}
        return _put_new(self.client, self.table, item, "request_key")

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.client.get_item(TableName=self.table, Key=_item({"request_key": key}), ConsistentRead=True)
        return _plain(found["Item"]) if "Item" in found else None

    def _query(self, index: str, condition: str, values: dict, names: dict | None = None,
               limit: int | None = None) -> Iterator[dict[str, Any]]:
        kwargs = {"TableName": self.table, "IndexName": index, "KeyConditionExpression": condition,
                  "ExpressionAttributeValues": _item(values), **({"ExpressionAttributeNames": names} if names else {})}
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

    def mark_launched(self, key: str, claimer: str, job_name: str, now: str) -> bool:
        """CLAIMED by us -> LAUNCHED in ``job_name``. Race: our claim went stale and another
        launcher re-claimed the request; its record must not be overwritten by ours."""
        # launching_job goes: once recorded, a later retry of this request is a new launch
        return self._update(key, "SET #s = :launched, job_name = :job, updated_at = :now, launched_at = :now "
                            "REMOVE launching_job",
                            "#s = :claimed AND claimed_by = :me",
                            {":launched": LAUNCHED, ":job": job_name, ":now": now, ":claimed": CLAIMED, ":me": claimer})

    def release(self, key: str, claimer: str, reason: str, now: str) -> bool:
        """CLAIMED by us -> PENDING with the reason (launch failed). Race: never release a
        claim that has since passed to another launcher."""
        return self._update(key, "SET #s = :pending, reason = :why, updated_at = :now",
                            "#s = :claimed AND claimed_by = :me",
                            {":pending": PENDING, ":why": reason[:1000], ":now": now, ":claimed": CLAIMED, ":me": claimer})

    def fail_claimed(self, key: str, claimer: str, reason: str, now: str) -> bool:
        """CLAIMED by us -> FAILED (the request can never run, e.g. no images). Race as release."""
        return self._update(key, "SET #s = :failed, reason = :why, updated_at = :now",
                            "#s = :claimed AND claimed_by = :me",
                            {":failed": FAILED, ":why": reason[:1000], ":now": now, ":claimed": CLAIMED, ":me": claimer})

    def note_launched(self, key: str, reason: str, now: str) -> bool:
        """LAUNCHED: record why something about it was refused (an artifact whose manifest
        does not vouch for it); the job's end still decides. Race: only while LAUNCHED, so a
        late event cannot overwrite the reason of a request completed or failed meanwhile."""
        return self._update(key, "SET reason = :why, updated_at = :now", "#s = :launched",
                            {":why": reason[:MAX_REASON], ":now": now, ":launched": LAUNCHED})

    def complete(self, key: str, now: str, job_name: str | None = None) -> bool:
        """LAUNCHED -> COMPLETED. Race: the task's artifact event and its job's state-change
        event both complete it; the second write finds COMPLETED and does nothing. With
        ``job_name``, a late event of an older job cannot complete a retried request."""
        condition = "#s = :launched" + (" AND job_name = :job" if job_name else "")
        values = {":done": COMPLETED, ":now": now, ":launched": LAUNCHED, ":job": job_name}
        return self._update(key, "SET #s = :done, updated_at = :now, completed_at = :now", condition, values)

    def fail_or_retry(self, key: str, job_name: str, reason: str, max_retries: int, now: str) -> str | None:
        """LAUNCHED in ``job_name`` -> PENDING (retries left) or FAILED; None if already moved.
        Race: EventBridge may deliver a job's state change twice; the job_name/LAUNCHED
        condition makes the second delivery a no-op instead of a second retry."""
        base = {":why": reason[:1000], ":now": now, ":launched": LAUNCHED, ":job": job_name}
        if self._update(key, "SET #s = :pending, reason = :why, updated_at = :now, retries = retries + :one REMOVE job_name",
                        "#s = :launched AND job_name = :job AND retries < :max",
                        {**base, ":pending": PENDING, ":one": 1, ":max": max_retries}):
            return PENDING
        if self._update(key, "SET #s = :failed, reason = :why, updated_at = :now",
                        "#s = :launched AND job_name = :job", {**base, ":failed": FAILED}):
            return FAILED
        return None


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

    def models_of(self, user_id: str) -> list[dict[str, Any]]:
        found = self.client.query(TableName=self.table, KeyConditionExpression="user_id = :u",
                                  ExpressionAttributeValues=_item({":u": user_id}))
        return [_plain(i) for i in found.get("Items", [])]
