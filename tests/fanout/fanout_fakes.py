"""SageMaker behaviour moto lacks, injected into a real boto3 client with a `before-send` hook.

- throttling: a fraction of CreateTrainingJob calls is answered 400 ThrottlingException
  before reaching moto, so botocore's own retry mode handles it exactly as against AWS;
- ResourceInUse for a job name that was already created (moto overwrites silently);
- ResourceLimitExceeded on demand;
and a moto server with DynamoDB's per-request atomicity. Also used by scripts/bench_launch.py.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

from botocore.awsrequest import AWSResponse

EVENTS = Path(__file__).resolve().parents[1] / "events"


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **kwargs):
        yield self._body


def error_response(url: str, code: str, message: str) -> AWSResponse:
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = {"x-amzn-RequestId": "fault-injected", "Content-Type": "application/x-amz-json-1.1",
               "Content-Length": str(len(body))}
    return AWSResponse(url, 400, headers, _Raw(body))


class SageMakerFaults:
    def __init__(self, throttle: float = 0.0, seed: int = 0, limit_exceeded: int = 0, exact: bool = False):
        self.throttle = throttle
        self.exact = exact                        # exactly `throttle` of calls, evenly spread
        self.rng = random.Random(seed)
        self.limit_exceeded = limit_exceeded      # answer this many calls ResourceLimitExceeded
        self.lock = threading.Lock()
        self.names: set[str] = set()
        self.calls = self.throttled = self.in_use = self.created = 0

    def _throttle_this_call(self) -> bool:
        if self.exact:
            return int(self.calls * self.throttle) > int((self.calls - 1) * self.throttle)
        return self.rng.random() < self.throttle

    def attach(self, client):
        client.meta.events.register("before-send.sagemaker.CreateTrainingJob", self)
        return self

    def __call__(self, request, **kwargs):
        name = json.loads(request.body)["TrainingJobName"]
        with self.lock:
            self.calls += 1
            if self._throttle_this_call():
                self.throttled += 1
                return error_response(request.url, "ThrottlingException", "Rate exceeded")
            if self.limit_exceeded:
                self.limit_exceeded -= 1
                return error_response(request.url, "ResourceLimitExceeded",
                                      "The account-level service limit 'ml.g5.xlarge for training job usage' is 0 Instances")
            if name in self.names:
                self.in_use += 1
                return error_response(request.url, "ResourceInUse", f"Training job names must be unique: {name}")
            self.names.add(name)
            self.created += 1
        return None


class EventBridgeFaults:
    """PutEvents as EventBridge answers it under load, injected into a real boto3 client:
    - ``throttle``: the next N calls are answered 400 ThrottlingException before reaching moto
      (botocore's retry mode retries them, as against AWS);
    - ``fail_entries``: the next N entries are answered with an ErrorCode inside a 200 answer
      (a partial failure: botocore does not retry it) and never reach moto; the other entries
      of the call are delivered (the request body is rewritten without the failed ones and
      the answer rebuilt in the original order, by a before-send and an after-call hook).
    """

    def __init__(self, throttle: int = 0, fail_entries: int = 0, code: str = "ThrottlingException"):
        self.throttle, self.fail_entries, self.code = throttle, fail_entries, code
        self.calls = self.throttled = self.failed = 0
        self._failed_at: list[int] = []

    def attach(self, client):
        client.meta.events.register("before-send.eventbridge.PutEvents", self.before_send)
        client.meta.events.register("after-call.eventbridge.PutEvents", self.after_call)
        return self

    def _failure(self) -> dict:
        return {"ErrorCode": self.code, "ErrorMessage": "injected: " + self.code}

    def before_send(self, request, **kwargs):
        self.calls += 1
        self._failed_at = []
        if self.throttle:
            self.throttle -= 1
            self.throttled += 1
            return error_response(request.url, "ThrottlingException", "Rate exceeded")
        body = json.loads(request.body)
        entries = body["Entries"]
        while self.fail_entries and len(self._failed_at) < len(entries):
            self._failed_at.append(len(self._failed_at))
            self.fail_entries -= 1
        self.failed += len(self._failed_at)
        if not self._failed_at:
            return None
        kept = [e for i, e in enumerate(entries) if i not in self._failed_at]
        if not kept:              # nothing goes to moto: the whole answer is the failures
            answer = json.dumps({"FailedEntryCount": len(entries), "Entries": [self._failure() for _ in entries]}).encode()
            self._failed_at = []
            return AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.1",
                                                  "Content-Length": str(len(answer))}, _Raw(answer))
        request.body = json.dumps({**body, "Entries": kept}).encode()
        request.headers["Content-Length"] = str(len(request.body))
        return None

    def after_call(self, parsed, **kwargs):
        if not self._failed_at or "Entries" not in parsed:
            return
        delivered = iter(parsed["Entries"])
        total = len(parsed["Entries"]) + len(self._failed_at)
        parsed["Entries"] = [self._failure() if i in self._failed_at else next(delivered) for i in range(total)]
        parsed["FailedEntryCount"] = parsed.get("FailedEntryCount", 0) + len(self._failed_at)
        self._failed_at = []


class AtomicMotoServer:
    """ThreadedMotoServer whose requests are processed one at a time.

    Real DynamoDB applies each conditional write atomically; moto's backend checks and then
    writes without a lock, so two threads could both pass a condition. Serialising requests
    at the WSGI layer restores per-request atomicity (clients still run concurrently).
    """

    def __new__(cls):
        from moto.moto_server import threaded_moto_server as tms

        lock = threading.Lock()
        original = tms.DomainDispatcherApplication

        def locked_app(*args, **kwargs):
            app = original(*args, **kwargs)

            def call(environ, start_response):
                with lock:
                    return list(app(environ, start_response))
            return call

        server = tms.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        tms.DomainDispatcherApplication = locked_app
        try:
            server.start()
        finally:
            tms.DomainDispatcherApplication = original
        return server


def load_event(name: str, **replacements: str) -> dict:
    """A sample event from tests/events/, with {placeholders} filled in."""
    text = (EVENTS / name).read_text()
    for key, value in replacements.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)
