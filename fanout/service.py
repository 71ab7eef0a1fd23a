"""The serverless path: one function per handler, over the stores and the launcher.

Layout in the bucket:
  requests/<user_id>/<request_id>/request.json   the request (uploaded after its images)
  requests/<user_id>/<request_id>/images/...     instance images (the `images` channel root is requests/)
  jobs/<job_name>/...                            task list, images manifest, checkpoints, model.tar.gz
  models/<user_id>/<request_id>/...              the task's artifacts, uploaded as soon as it finishes
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

from fanout.errors import TaskListError
from fanout.events import ARTIFACT_KEY, REQUEST_KEY, JobStateChange
from fanout.hyperparameters import task_name_problems, task_value_problems
from fanout.launcher import Launcher, RateLimiter, S3Objects, image_keys
from fanout.plan import claim_limit, launch_batches
from fanout.request import LaunchConfig, prepare_job
from fanout.settings import Settings
from fanout.status import read_statuses
from fanout.store import COMPLETED, ModelStore, RequestStore
from fanout.tasks import TASK_ID_PATTERN, TaskSpec, parse_tasks

log = logging.getLogger("fanout")
PARALLEL_WRITES = 8
REQUEST_FIELDS = ("instance_prompt", "class_prompt", "class_data", "validation_prompts", "hyperparameters", "metadata")
# A request is stored whole in its DynamoDB item (400 KB at most, key and bookkeeping
# included); refusing larger files at the door keeps every item far below that limit.
MAX_REQUEST_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
LORA_FILE = "pytorch_lora_weights.safetensors"
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Service:
    settings: Settings
    requests: RequestStore
    models: ModelStore
    launcher: Launcher
    objects: S3Objects
    clock: Callable[[], str] = utc_now

    @classmethod
    def from_settings(cls, settings: Settings, session=None) -> "Service":
        s3, dynamodb = settings.client("s3", session), settings.client("dynamodb", session)
        launcher = Launcher(settings.client("sagemaker", session), s3, RateLimiter(settings.launch_rate))
        return cls(settings, RequestStore(dynamodb, settings.requests_table),
                   ModelStore(dynamodb, settings.models_table), launcher, S3Objects(s3))

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.settings.bucket, *parts])

    def ago(self, seconds: float) -> str:
        now = dt.datetime.fromisoformat(self.clock())
        return (now - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def task_id_for(user_id: str, request_id: str) -> str:
    """A valid task id for a request, unique by construction.

    `<user>.<request>` when both ids are plain (letters, digits, '_', '-': no '.'), so the
    one '.' splits it back into the pair; otherwise a readable prefix with no '.' and the
    sha256 of the pair, which can never equal a plain id (that has a '.')."""
    candidate = f"{user_id}.{request_id}"
    if _PLAIN_ID.fullmatch(user_id) and _PLAIN_ID.fullmatch(request_id) and re.fullmatch(TASK_ID_PATTERN, candidate):
        return candidate
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", candidate).lstrip("_-")[:60] or "req"
    return f"{safe}-{hashlib.sha256(json.dumps([user_id, request_id]).encode()).hexdigest()}"


def request_task(svc: Service, user_id: str, request_id: str, body: dict) -> dict:
    """The task-list object for an uploaded request (validated like any task list)."""
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise TaskListError([f"unknown field(s) {', '.join(unknown)}; valid: {', '.join(REQUEST_FIELDS)}"])
    task = {k: body[k] for k in REQUEST_FIELDS if k in body}
    metadata = body.get("metadata")
    if metadata is None or isinstance(metadata, dict):
        metadata = {**(metadata or {}), "request_id": request_id}
    # (anything else stays as sent, so validation names the field instead of a TypeError here)
    task.update(task_id=task_id_for(user_id, request_id), instance_data=f"{user_id}/{request_id}/images",
                user_id=user_id, output_uri=svc.uri("models", user_id, request_id) + "/", metadata=metadata)
    source = svc.uri("requests", user_id, request_id, "request.json")
    tasks = parse_tasks(json.dumps(task), source=source)
    problems = task_name_problems(tasks, source) or task_value_problems(tasks, source, svc.settings.job_hyperparameters)
    if problems:
        raise TaskListError(problems, source)
    return task


def _read_request(svc: Service, bucket: str, key: str) -> dict:
    """request.json as a JSON object; TaskListError (naming the key and what is valid) if not."""
    source = f"s3://{bucket}/{key}"
    raw = _read_bounded(svc, bucket, key, MAX_REQUEST_BYTES)
    if raw is None:
        raise TaskListError([f"request.json is larger than {MAX_REQUEST_BYTES} bytes, the most a request may be "
                             "(it is stored in one DynamoDB item, 400 KB at most)"], source)
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TaskListError(["request.json is not UTF-8 text"], source) from None
    except ValueError as exc:
        raise TaskListError([f"request.json is not valid JSON ({exc})"], source) from None
    if not isinstance(body, dict):
        raise TaskListError([f"request.json is not a JSON object (got {type(body).__name__}); expected "
                             f"{{\"instance_prompt\": ...}} with optional {', '.join(REQUEST_FIELDS[1:])}"], source)
    return body


def _read_bounded(svc: Service, bucket: str, key: str, limit: int) -> bytes | None:
    """The object's bytes, or None when it is larger than ``limit`` (then it is not read)."""
    found = svc.objects.s3.get_object(Bucket=bucket, Key=key)
    with found["Body"] as body:
        if found.get("ContentLength", 0) > limit:
            return None
        return body.read(limit + 1)


def register_upload(svc: Service, bucket: str, key: str) -> str:
    """request.json uploaded -> one PENDING request ('created', 'duplicate', 'invalid', 'ignored')."""
    match = REQUEST_KEY.match(key)
    if bucket != svc.settings.bucket or not match:
        return "ignored"                               # images and other objects
    user_id, request_id = match["user"], match["request"]
    try:
        task = request_task(svc, user_id, request_id, _read_request(svc, bucket, key))
    except TaskListError as exc:
        # recorded, not raised: a retry cannot fix the file, the user can read why
        svc.requests.put_new(user_id, request_id, {}, svc.clock(), status="FAILED", reason=str(exc))
        return "invalid"
    return "created" if svc.requests.put_new(user_id, request_id, task, svc.clock()) else "duplicate"


def _launch_config(svc: Service, count: int) -> LaunchConfig:
    s = svc.settings
    return LaunchConfig(image_uri=s.image_uri, role_arn=s.role_arn, model_uri=s.model_uri,
                        images_uri=svc.uri("requests") + "/", output_uri=svc.uri("jobs") + "/",
                        instance_type=s.instance_type, instance_count=count, volume_size_gb=s.volume_size_gb,
                        hyperparameters=s.job_hyperparameters, max_runtime_s=s.max_runtime_s,
                        spot=s.spot, max_wait_s=s.max_wait_s, warm_pool_s=s.warm_pool_s,
                        kms_key=s.kms_key or None, volume_kms_key=s.kms_key or None, job_prefix=s.job_prefix,
                        subnets=s.vpc[0], security_groups=s.vpc[1])


def _each(function, items: list) -> list:
    """``function`` over items on a few threads: the conditional writes are independent, and
    per-request round trips, not the 1/s launch limit, dominate a large backlog."""
    if len(items) < 2:
        return [function(i) for i in items]
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        return list(pool.map(function, items))


def _claim(svc: Service, claimer: str) -> tuple[dict[str, dict], list[str]]:
    """Claimed requests by task id (each won by one conditional write), and what collided."""
    s = svc.settings
    stale = svc.ago(s.claim_timeout_s)
    items = [i for i in svc.requests.claimable(stale, limit=claim_limit(s.max_tasks_per_job, s.max_jobs_per_run)) if i.get("task")]
    won = _each(lambda item: svc.requests.claim(item["request_key"], claimer, svc.clock(), stale), items)
    return _without_collisions(svc, claimer, [item for item, ok in zip(items, won) if ok])


def _without_collisions(svc: Service, claimer: str, items: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """Two claimed requests with one task id cannot share a job (one would overwrite the
    other's folders). task_id_for makes that impossible for new requests; should it happen
    anyway (an older id scheme), the later one goes back to PENDING, saying why, and trains
    in a later job: never dropped in silence."""
    claimed: dict[str, dict] = {}
    errors = []
    for item in items:
        task_id = json.loads(item["task"])["task_id"]
        if task_id not in claimed:
            claimed[task_id] = item
            continue
        reason = (f"task id {task_id!r} is also the task id of request {claimed[task_id]['request_key']} "
                  "in this batch; left for a later job")
        svc.requests.release(item["request_key"], claimer, reason, svc.clock())
        errors.append(f"request {item['request_key']}: {reason}")
    return claimed, errors


def _with_images(svc: Service, claimer: str, claimed: dict[str, dict],
                 tasks: list[TaskSpec]) -> tuple[list[TaskSpec], dict[str, list[str]]]:
    """Tasks that have images (the others FAILED with the reason) and every task's image keys."""
    listed = image_keys(svc.objects, svc.uri("requests") + "/", [t.instance_data for t in tasks])
    for t in [t for t in tasks if not listed.get(t.instance_data)]:
        svc.requests.fail_claimed(claimed[t.task_id]["request_key"], claimer,
                                  f"no images under {svc.uri('requests', t.instance_data)}/ (upload images before request.json)", svc.clock())
    return [t for t in tasks if listed.get(t.instance_data)], listed


def _valid(svc: Service, claimer: str, claimed: dict[str, dict], tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Tasks whose hyperparameters pass today's checks (the others FAILED with the reason), so
    that one request accepted under older rules cannot fail every batch it is put in."""
    good = []
    for t in tasks:
        problems = task_name_problems([t], t.task_id) or task_value_problems([t], t.task_id,
                                                                             svc.settings.job_hyperparameters)
        if problems:
            svc.requests.fail_claimed(claimed[t.task_id]["request_key"], claimer, "; ".join(problems), svc.clock())
        else:
            good.append(t)
    return good


def _adopt_created(svc: Service, claimer: str, claimed: dict[str, dict]) -> int:
    """Taken-over claims whose earlier launcher created their job but died before recording
    it: recorded as LAUNCHED in that job (and left out of new batches). Returns how many."""
    adopted = 0
    for task_id, item in list(claimed.items()):
        job_name = item.get("launching_job")
        if job_name and svc.launcher.job_exists(job_name):
            del claimed[task_id]
            adopted += svc.requests.mark_launched(item["request_key"], claimer, job_name, svc.clock())
    return adopted


def launch_pending(svc: Service, claimer: str | None = None) -> dict[str, Any]:
    """Claim pending requests, launch K-instance jobs of similar-cost tasks, mark them LAUNCHED.

    A job that cannot be created hands its claims back (PENDING, with the reason)."""
    claimer = claimer or uuid.uuid4().hex
    claimed, collided = _claim(svc, claimer)
    adopted = _adopt_created(svc, claimer, claimed)
    tasks = [replace(t, line=0) for item in claimed.values() for t in parse_tasks(item["task"])]
    tasks, listed = _with_images(svc, claimer, claimed, _valid(svc, claimer, claimed, tasks))
    hp = svc.settings.job_hyperparameters
    result: dict[str, Any] = {"jobs": [], "launched": adopted, "released": len(collided),
                              "failed": len(claimed) - len(tasks), "errors": collided}
    for batch, count in launch_batches(tasks, svc.settings.max_tasks_per_job, svc.settings.max_instances, hp):
        keys = [claimed[t.task_id]["request_key"] for t in batch]
        # the retry counts are part of the name: a re-queued batch is a new job, a re-run launch is not
        salt = json.dumps({k: int(claimed[t.task_id].get("retries", 0)) for k, t in zip(keys, batch)}, sort_keys=True)
        try:
            job = prepare_job(batch, _launch_config(svc, count), salt=salt)
            _each(lambda k: svc.requests.note_launching(k, claimer, job.name, svc.clock()), keys)
            launched = svc.launcher.launch(job, svc.uri("requests") + "/", listed)
        except Exception as exc:   # edge of a batch: whatever failed, the claims go back with the reason
            for key in keys:
                svc.requests.release(key, claimer, f"launch failed: {exc}", svc.clock())
            result["released"] += len(keys)
            result["errors"].append(f"{type(exc).__name__}: {exc}")
            continue
        marked = [k for k, ok in zip(keys, _each(lambda k: svc.requests.mark_launched(
            k, claimer, launched.job_name, svc.clock()), keys)) if ok]
        result["jobs"].append(launched.job_name)
        result["launched"] += len(marked)
        if len(marked) < len(keys):      # our claim went stale and was taken over meanwhile
            result["errors"].append(f"{len(keys) - len(marked)} claim(s) lost before {launched.job_name} was recorded")
    return result


def _register(svc: Service, item: dict, job_name: str | None, now: str, model_tar: str | None = None,
              **serving: Any) -> None:
    task = json.loads(item["task"])
    svc.models.register(item["user_id"], item["request_id"], now, artifact_uri=task.get("output_uri"),
                        model_tar_uri=model_tar, task_id=task["task_id"], job_name=job_name,
                        base_model=svc.settings.model_uri or None, request_key=item["request_key"], **serving)


def record_job_state(svc: Service, change: JobStateChange) -> dict[str, Any]:
    """A job ended: each of its requests COMPLETED (+ registered), retried or FAILED."""
    if not change.terminal:
        return {"job": change.job_name, "status": change.status, "ignored": True}
    items = svc.requests.by_job(change.job_name)
    if not items:      # not a job we launched: touch none of its buckets
        return {"job": change.job_name, "status": change.status, "ignored": True, "reason": "no request of ours is in this job"}
    # Our own layout, not the event's CheckpointConfig: we know where our jobs checkpoint.
    statuses = read_statuses(svc.objects, svc.uri("jobs", change.job_name, "checkpoints"))
    counts = {"completed": 0, "PENDING": 0, "FAILED": 0, "unchanged": 0}
    for item in items:
        task_id = json.loads(item["task"])["task_id"]
        status = statuses.get(task_id, {})
        now = svc.clock()
        if status.get("state") == "completed":
            if svc.requests.complete(item["request_key"], now, change.job_name):
                counts["completed"] += 1
            _register(svc, item, change.job_name, now, change.model_artifacts)
            continue
        reason = status.get("error") or f"job {change.status}: {change.failure_reason or 'task did not finish'}"
        outcome = svc.requests.fail_or_retry(item["request_key"], change.job_name, reason, svc.settings.max_retries, now)
        counts[outcome or "unchanged"] += 1
    return {"job": change.job_name, "status": change.status, **counts}


def record_task_artifact(svc: Service, bucket: str, key: str) -> str:
    """A task's manifest.json landed under models/<user>/<request>/: COMPLETED and registered
    now, when the manifest names the request's task and its files are there ('invalid' if not:
    the request stays LAUNCHED and its job's end decides, from the task's status.json)."""
    match = ARTIFACT_KEY.match(key)
    if bucket != svc.settings.bucket or not match:
        return "ignored"
    item = svc.requests.get(f"{match['user']}/{match['request']}")
    if item is None or not item.get("task"):
        return "unknown"
    if item.get("status") != COMPLETED:
        problem = _manifest_problem(svc, bucket, key, json.loads(item["task"])["task_id"])
        if problem:
            log.warning("request %s: %s", item["request_key"], problem)
            svc.requests.note_launched(item["request_key"], f"artifact not accepted: {problem}", svc.clock())
            return "invalid"
    now = svc.clock()
    done = svc.requests.complete(item["request_key"], now)
    if done or item.get("status") == COMPLETED:
        _register(svc, item, item.get("job_name"), now, **serving_fields(svc, bucket, key))
    return "completed" if done else "duplicate"


def serving_fields(svc: Service, bucket: str, key: str) -> dict[str, str]:
    """What the inference server (serve/, docs/serving.md) needs to serve the model by its id:
    the LoRA file's URI, and from the manifest the family and the base's weights hash (it
    refuses a model of another family or base before downloading it)."""
    fields = {"adapter_uri": f"s3://{bucket}/{key[: -len('manifest.json')]}{LORA_FILE}"}
    try:
        manifest = json.loads((_read_bounded(svc, bucket, key, MAX_MANIFEST_BYTES) or b"{}").decode("utf-8"))
    except (svc.objects.s3.exceptions.NoSuchKey, ValueError):
        return fields
    if isinstance(manifest, dict) and isinstance(manifest.get("family"), str):
        fields["family"] = manifest["family"]
    base = manifest.get("base_model") if isinstance(manifest, dict) else None
    if isinstance(base, dict) and isinstance(base.get("weights_sha256"), str):
        fields["base_weights_sha256"] = base["weights_sha256"]
    return fields


def _manifest_problem(svc: Service, bucket: str, key: str, task_id: str) -> str | None:
    """Why the manifest at ``key`` does not vouch for a trained model of ``task_id`` (None: it does)."""
    uri = f"s3://{bucket}/{key}"
    try:
        raw = _read_bounded(svc, bucket, key, MAX_MANIFEST_BYTES)
    except svc.objects.s3.exceptions.NoSuchKey:
        return f"{uri} no longer exists"
    try:
        manifest = json.loads(raw.decode("utf-8")) if raw is not None else None
    except ValueError:
        return f"{uri} is not valid JSON"
    if not isinstance(manifest, dict):
        return f"{uri} is not a JSON manifest object" + (f" (larger than {MAX_MANIFEST_BYTES} bytes)" if raw is None else "")
    if manifest.get("task_id") != task_id:
        return f"{uri} is the manifest of task {manifest.get('task_id')!r}, not of {task_id!r}"
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    listed = {f.get("path"): f.get("bytes") for f in files if isinstance(f, dict)}
    if LORA_FILE not in listed:
        return f"{uri} does not list {LORA_FILE}"
    prefix = key[: -len("manifest.json")]
    present = _sizes_under(svc, bucket, prefix)
    missing = sorted(str(p) for p, size in listed.items() if p not in present or size not in (None, present[p]))
    if missing:
        return f"{uri} lists file(s) missing or of another size under s3://{bucket}/{prefix}: {', '.join(missing[:5])}"
    return None


def _sizes_under(svc: Service, bucket: str, prefix: str) -> dict[str, int]:
    """{path relative to prefix: size} of every object under it."""
    pages = svc.objects.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["Size"] for page in pages for o in page.get("Contents", [])}
