"""Which IAM permission each recorded AWS call needs, and whether a policy grants it.

moto does not evaluate IAM resources for most services, so the least-privilege test records
every call a deployed handler makes (the runner hooks boto3) and checks each one against the
function's own role policy, read back from IAM: Action and Resource matched with IAM's
wildcards. Conditions are not evaluated; they only narrow what is matched here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

# operations whose IAM action is not "<service>:<Operation>"
ACTIONS = {("s3", "ListObjectsV2"): "s3:ListBucket", ("s3", "HeadObject"): "s3:GetObject"}


def needed(call: dict[str, Any], region: str, account: str) -> list[tuple[str, str]]:
    """[(action, resource ARN)] one recorded call {service, operation, params} needs."""
    service, op, p = call["service"], call["operation"], call["params"]
    action = ACTIONS.get((service, op), f"{service}:{op}")
    if service == "s3":
        resource = f"arn:aws:s3:::{p['Bucket']}" + (f"/{p['Key']}" if "Key" in p else "")
        return [(action, resource)]
    if service == "dynamodb":
        table = f"arn:aws:dynamodb:{region}:{account}:table/{p['TableName']}"
        return [(action, table + (f"/index/{p['IndexName']}" if "IndexName" in p else ""))]
    if service == "sagemaker":
        arn = p.get("ResourceArn") or f"arn:aws:sagemaker:{region}:{account}:training-job/{p['TrainingJobName'].lower()}"
        extra = [("iam:PassRole", p["RoleArn"])] if op == "CreateTrainingJob" else []
        if op == "CreateTrainingJob" and p.get("Tags"):
            extra.append(("sagemaker:AddTags", arn))      # tagging on create needs AddTags too
        return [(action, arn), *extra]
    if service == "events" and op == "PutEvents":         # each entry's bus, by name or ARN
        buses = {e.get("EventBusName") or "default" for e in p["Entries"]}
        return [(action, b if b.startswith("arn:") else f"arn:aws:events:{region}:{account}:event-bus/{b}") for b in sorted(buses)]
    return [(action, "*")]


def _statements(policy: dict) -> Iterable[dict]:
    statements = policy.get("Statement", [])
    return [statements] if isinstance(statements, dict) else statements


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _wild(pattern: str, value: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value, re.I) is not None


def allows(policy: dict, action: str, resource: str) -> bool:
    """An Allow statement covers (action, resource) and no Deny does."""
    def covers(st: dict) -> bool:
        return (any(_wild(a, action) for a in _listed(st.get("Action", [])))
                and any(_wild(r, resource) for r in _listed(st.get("Resource", []))))
    hits = [st for st in _statements(policy) if covers(st)]
    return any(st["Effect"] == "Allow" for st in hits) and not any(st["Effect"] == "Deny" for st in hits)


def granted_actions(policy: dict) -> set[str]:
    return {a for st in _statements(policy) if st["Effect"] == "Allow" for a in _listed(st.get("Action", []))}
