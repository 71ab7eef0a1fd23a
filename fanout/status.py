"""Reading a job's per-task status.json files from its checkpoint prefix (`fanout status`).

Layout written by the container: `<checkpoint_s3_uri>/<task_id>/status.json` with state, step,
loss, started_at, finished_at, attempts, host, slot, error, and `quality` (issue 17) once a
task was evaluated. Hosts sync checkpoints continuously, so this is live while the job runs.
"""

from __future__ import annotations

import json
from typing import Any

from fanout.launcher import S3Objects, split_s3
from fanout.tasks import parse_tasks

STATUS_FIELDS = ("state", "step", "loss", "host", "slot", "attempts", "started_at", "finished_at", "error")


def read_statuses(objects: S3Objects, checkpoint_uri: str) -> dict[str, dict[str, Any]]:
    """{task_id: status} for every `<task_id>/status.json` directly under the prefix."""
    bucket, prefix = split_s3(checkpoint_uri.rstrip("/") + "/")
    statuses = {}
    for key in objects.keys(f"s3://{bucket}/{prefix}"):
        parts = key[len(prefix):].split("/")
        if len(parts) != 2 or parts[1] != "status.json":
            continue
        try:
            statuses[parts[0]] = json.loads(objects.get_text(f"s3://{bucket}/{key}"))
        except ValueError:
            statuses[parts[0]] = {"state": "unreadable", "error": f"s3://{bucket}/{key} is not JSON"}
    return statuses


def verdict_of(status: dict[str, Any]) -> str | None:
    """A task's quality verdict: its status.json's `quality.verdict`; `not_evaluated` for a
    completed task without one (no scorers); None while it has no model."""
    quality = status.get("quality")
    if isinstance(quality, dict) and isinstance(quality.get("verdict"), str):
        return quality["verdict"]
    return "not_evaluated" if status.get("state") == "completed" else None


def _job_tasks(objects: S3Objects, description: dict) -> list[str]:
    """Task ids from the job's `tasks` channel (so tasks not started yet show as pending)."""
    for channel in description.get("InputDataConfig", []):
        if channel.get("ChannelName") == "tasks":
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            try:
                keys = [k for k in objects.keys(uri) if k.endswith((".jsonl", ".json"))]
                bucket, _ = split_s3(uri)
                return [t.task_id for k in keys for t in parse_tasks(objects.get_text(f"s3://{bucket}/{k}"))]
            except Exception:   # a missing or edited task list only loses the pending rows
                return []
    return []


def job_status(sagemaker, objects: S3Objects, job_name: str) -> dict[str, Any]:
    """The job's state and one row per task (pending when no status.json exists yet)."""
    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    checkpoint = job.get("CheckpointConfig", {}).get("S3Uri")
    statuses = read_statuses(objects, checkpoint) if checkpoint else {}
    order = _job_tasks(objects, job) or sorted(statuses)
    tasks = [{"task_id": tid, **{f: statuses.get(tid, {}).get(f) for f in STATUS_FIELDS}} for tid in order]
    for row in tasks:
        row["state"] = row["state"] or "pending"
        row["verdict"] = verdict_of(statuses.get(row["task_id"], {}))
    return {"job": job_name, "state": job.get("TrainingJobStatus"), "secondary": job.get("SecondaryStatus"),
            "failure_reason": job.get("FailureReason"), "checkpoints": checkpoint, "tasks": tasks}
