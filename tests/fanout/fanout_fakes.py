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
