"""Publishing a request's pending lifecycle events to EventBridge (receives its clients).

The events wait in the request item's outbox (fanout/store.py), written by the transition
itself. After the write, the handler publishes them here and deletes them from the outbox.

Retries. A throttled PutEvents call (HTTP 400 ThrottlingException) is botocore's: the client
comes from `Settings.client`, whose retry mode retries it with backoff, as for every AWS call
of the project. An entry EventBridge answers with an ErrorCode inside a 200 answer (a partial
failure) is retried here, with the same attempt budget (FANOUT_MAX_ATTEMPTS), jittered
exponential backoff and an explicit tuple of retryable codes. What still fails raises
PublishError: the events stay in the outbox, the handler reports its record failed, and the
source's redelivery (or the scheduled launcher's sweep) publishes them.

One entry per call: a request's events go out in the order they happened even when one
fails (the later ones wait for it); events of different requests are independent.
The crash window (after the write, before the publish, or between the publish and the
outbox delete) is covered by the sweep: at-least-once, with a stable `event_id`.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Iterable

from botocore.exceptions import BotoCoreError, ClientError

from fanout.errors import PublishError
from fanout.lifecycle import Event
from fanout.store import OUTBOX_INDEX

RETRYABLE_ENTRY_CODES = ("ThrottlingException", "InternalFailure", "InternalException", "ServiceUnavailable",
                         "ServiceUnavailableException")
BASE_BACKOFF_S, MAX_BACKOFF_S = 0.1, 5.0
# The sweep leaves events younger than this to the handler that wrote them (it is publishing
# them now, with botocore's retries), so a healthy publish is never doubled by the sweep.
SWEEP_AFTER_S = 120
SWEEP_LIMIT = 200


class EventPublisher:
    def __init__(self, client, bus: str, requests, *, max_attempts: int = 8, telemetry=None,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random):
        self.client, self.bus, self.requests = client, bus, requests
        # FANOUT_MAX_ATTEMPTS counts retries after the first try, as botocore's `max_attempts` does
        self.tries, self.telemetry = max(0, max_attempts) + 1, telemetry
        self._sleep, self._jitter = sleep, jitter

    def publish(self, key: str, pending: Iterable[str]) -> int:
        """Publish the outbox members ``pending`` of request ``key`` in order, then drop them
        from its outbox; the number published. PublishError when one is left (it and the ones
        after it stay in the outbox)."""
        members = {m for m in pending if isinstance(m, str)}
        if not members:
            return 0
        ordered = sorted(((m, Event.decode(m)) for m in members), key=lambda pair: pair[1].order)
        done: set[str] = set()
        try:
            for member, event in ordered:
                self._put(event)
                done.add(member)
        finally:
            self.requests.events_published(key, done, members)
            self._count("EventsPublished", len(done))
        return len(done)

    def _put(self, event: Event) -> None:
        """One entry, retried while EventBridge answers a retryable ErrorCode for it."""
        for attempt in range(self.tries):
            try:
                answer = self.client.put_events(Entries=[event.entry(self.bus)])
            except (ClientError, BotoCoreError) as exc:       # botocore already retried it
                self._count("EventPublishFailures")
                raise PublishError(f"PutEvents of {event.detail_type} for {event.detail['request_key']} to bus "
                                   f"{self.bus} failed: {exc}") from exc
            [result] = answer.get("Entries") or [{"ErrorCode": "NoResult", "ErrorMessage": "no entry in the answer"}]
            code = result.get("ErrorCode")
            if not code:
                return
            if code not in RETRYABLE_ENTRY_CODES or attempt + 1 == self.tries:
                self._count("EventPublishFailures")
                raise PublishError(f"EventBridge refused {event.detail_type} for {event.detail['request_key']} "
                                   f"after {attempt + 1} attempt(s): {code}: {result.get('ErrorMessage', '')}")
            self._count("EventPublishRetries")
            self._sleep(self._jitter() * min(MAX_BACKOFF_S, BASE_BACKOFF_S * 2 ** attempt))

    def sweep(self, before: str, limit: int = SWEEP_LIMIT) -> tuple[int, list[str]]:
        """Publish the events of items whose outbox has waited since before ``before`` (a handler
        died between its write and its publish, or its retries ran out): (published, errors)."""
        published, errors = 0, []
        try:
            keys = self.requests.with_pending_events(before, limit)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ValidationException":
                raise
            # a table made before the index existed: launching goes on, the operator is told
            return 0, [f"the requests table has no {OUTBOX_INDEX} index, so events left by a failed publish are "
                       f"only sent on their record's redelivery; add it (terraform apply, or docs/fanout.md): {exc}"]
        for key in keys:
            item = self.requests.get(key)                # consistent: the index may lag
            if not item or not item.get("outbox"):
                self.requests.drop_outbox_marker(key)
                continue
            try:
                count = self.publish(key, item["outbox"])
            except PublishError as exc:
                errors.append(str(exc))
                continue
            published += count
            self._count("EventsRepublished", count)
        return published, errors

    def _count(self, name: str, n: int = 1) -> None:
        if self.telemetry is not None and n:
            self.telemetry.count(name, n)
