"""`fanout bootstrap`: the bucket and both tables, created if absent (dev/test accounts).

Production stacks usually come from infrastructure code; this makes a fresh account or a
moto server usable with the same names the handlers read from the environment.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from fanout.settings import Settings
from fanout.store import JOB_INDEX, OUTBOX_INDEX, STATUS_INDEX

ALREADY = ("BucketAlreadyOwnedByYou", "ResourceInUseException")


def _string_attrs(*names: str) -> list[dict]:
    return [{"AttributeName": n, "AttributeType": "S"} for n in names]


def _index(name: str, hash_key: str, range_key: str | None = None, projection: str = "ALL") -> dict:
    schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
    if range_key:
        schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
    return {"IndexName": name, "KeySchema": schema, "Projection": {"ProjectionType": projection}}


def requests_table_spec(name: str) -> dict:
    """The `requests` table: one item per request; indexes by status and by job, and the
    sparse `by-outbox` (keys only) of requests whose lifecycle events wait to be published."""
    return {"TableName": name, "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": _string_attrs("request_key", "status", "updated_at", "job_name", "outbox_at"),
            "KeySchema": [{"AttributeName": "request_key", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [_index(STATUS_INDEX, "status", "updated_at"), _index(JOB_INDEX, "job_name"),
                                       _index(OUTBOX_INDEX, "outbox_at", projection="KEYS_ONLY")]}


def models_table_spec(name: str) -> dict:
    """The `models` table: a user's models, newest registration kept first-come."""
    return {"TableName": name, "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": _string_attrs("user_id", "model_id"),
            "KeySchema": [{"AttributeName": "user_id", "KeyType": "HASH"},
                          {"AttributeName": "model_id", "KeyType": "RANGE"}]}


def _created(call, **kwargs) -> bool:
    try:
        call(**kwargs)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ALREADY:
            return False
        raise


def _bucket_exists(s3, bucket: str) -> bool:
    """HeadBucket first: in us-east-1 CreateBucket on an owned bucket answers 200, not an error."""
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise


def bootstrap(settings: Settings, s3, dynamodb) -> dict[str, bool]:
    """Create what is missing; returns {resource: created_now}."""
    bucket_args = {"Bucket": settings.bucket}
    region = s3.meta.region_name
    if region and region != "us-east-1":
        bucket_args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    result = {f"s3://{settings.bucket}": not _bucket_exists(s3, settings.bucket) and _created(s3.create_bucket, **bucket_args)}
    for spec in (requests_table_spec(settings.requests_table), models_table_spec(settings.models_table)):
        result[f"dynamodb:{spec['TableName']}"] = _created(dynamodb.create_table, **spec)
        dynamodb.get_waiter("table_exists").wait(TableName=spec["TableName"], WaiterConfig={"Delay": 1})
    return result
