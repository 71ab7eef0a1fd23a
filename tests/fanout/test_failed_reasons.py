"""A request refused for a bad value stores a reason in DynamoDB that names the field and the
rule, never a credential the user pasted (moto over HTTP: the stored item as DynamoDB holds it)."""

from __future__ import annotations

import json

from test_serverless import upload_request

from fanout import handlers
from fanout.service import launch_pending
from fanout.store import FAILED

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _stored(svc) -> str:
    """Every item of the requests table, as DynamoDB returns it."""
    return json.dumps(svc.requests.client.scan(TableName=svc.settings.requests_table)["Items"])


def test_a_refused_request_never_stores_the_credential_it_carried(svc):
    handlers.on_upload(upload_request(svc, "u1", "r1", hyperparameters={"learning_rate": AWS_KEY}))
    handlers.on_upload(upload_request(svc, "u1", "r2", hyperparameters={"mixed_precision": AWS_SECRET}))
    handlers.on_upload(upload_request(svc, "u1", "r3", metadata=AWS_SECRET))
    for key, field in (("u1/r1", "learning_rate"), ("u1/r2", "mixed_precision"), ("u1/r3", "metadata")):
        item = svc.requests.get(key)
        assert item["status"] == FAILED and field in item["reason"], item["reason"]
        assert "not shown" in item["reason"]
    stored = _stored(svc)
    assert AWS_KEY not in stored and AWS_SECRET not in stored


def test_a_queued_request_refused_at_launch_stores_no_credential_either(svc):
    # accepted under older rules, refused by today's when the launcher claims it
    svc.requests.put_new("old", "req", {"task_id": "old.req", "instance_data": "old/req/images",
                                        "instance_prompt": "p", "hyperparameters": {"resolution": AWS_KEY}}, svc.clock())
    out = launch_pending(svc)
    assert out["failed"] == 1
    item = svc.requests.get("old/req")
    assert item["status"] == FAILED and "resolution" in item["reason"] and AWS_KEY not in item["reason"]
