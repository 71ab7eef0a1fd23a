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
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from fanout import outcomes
from fanout.api_rules import member_problems
from fanout.errors import FamilyError, FanoutError, PublishError, SettingsError, TaskListError
from fanout.events import ARTIFACT_KEY, REQUEST_KEY, JobStateChange
from fanout.families import FamilySpec, family_id, resolve_family
from fanout.fit import task_fit_problem
from fanout.hyperparameters import task_name_problems, task_value_problems
from fanout.instances import InstanceType, instance_type, slots_per_host
from fanout.launcher import IMAGE_SUFFIXES, Launcher, RateLimiter, S3Objects, image_count, image_keys
from fanout.plan import PlanConfig, claim_limit, launch_batches
from fanout.publisher import SWEEP_AFTER_S, EventPublisher
from fanout.quality import Quality, model_fields
from fanout.redaction import shown_name
from fanout.request import LaunchConfig, prepare_job
from fanout.settings import Settings
from fanout.status import read_statuses
from fanout.store import ModelStore, RequestStore
from fanout.tasks import TASK_ID_PATTERN, TaskSpec, parse_tasks
from fanout.telemetry import Telemetry, reason_class, watch_launches

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
    events: EventPublisher | None = None          # None: FANOUT_EVENT_BUS unset, no lifecycle events
    telemetry: Telemetry = field(default_factory=Telemetry)
    # launch_target's family by (FANOUT_MODEL_FAMILY, FANOUT_MODEL_URI): model_index.json is read
    # once per container, not on every launch_pending run (failures are not kept: read again)
    _families: dict[tuple[str, str], tuple[FamilySpec, str]] = field(default_factory=dict, init=False, repr=False,
                                                                   compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, session=None) -> "Service":
        s3, dynamodb = settings.client("s3", session), settings.client("dynamodb", session)
        launcher = Launcher(settings.client("sagemaker", session), s3, RateLimiter(settings.launch_rate))
        requests, telemetry = RequestStore(dynamodb, settings.requests_table), Telemetry(settings.metrics_namespace, settings.job_prefix)
        watch_launches(launcher.sagemaker, telemetry)
        events = EventPublisher(settings.client("events", session), settings.event_bus, requests,
                                max_attempts=settings.max_attempts, telemetry=telemetry) if settings.event_bus else None
        return cls(settings, requests, ModelStore(dynamodb, settings.models_table), launcher, S3Objects(s3),
                   events=events, telemetry=telemetry)

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
        raise TaskListError([f"unknown field(s) {', '.join(map(shown_name, unknown))}; valid: {', '.join(REQUEST_FIELDS)}"])
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
        outcomes.record_new(svc, user_id, request_id, {}, reason=str(exc))
        return "invalid"
    return "created" if outcomes.record_new(svc, user_id, request_id, task) else "duplicate"


@dataclass
class LaunchTarget:
    """What every job of a launch_pending run shares: the instance type, its slots, the family."""

    instance: InstanceType
    slots: int
    family: FamilySpec | None = None
    variant: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def family_setting(self) -> str:
        return "" if self.family is None else family_id(self.family, self.variant)


def launch_target(svc: Service) -> LaunchTarget:
    """The deployment's launch settings checked before anything is claimed (SettingsError: a
    setting no request could ever launch with); the family from FANOUT_MODEL_FAMILY or the
    base's model_index.json. A family that cannot be read is a warning, not an error: costs
    then fall back to sd and the GPU-memory fit is not checked (set FANOUT_MODEL_FAMILY)."""
    s = svc.settings
    try:
        instance = instance_type(s.instance_type, "FANOUT_INSTANCE_TYPE")
        target = LaunchTarget(instance, slots_per_host(instance, s.job_hyperparameters.get("gpus_per_host")))
    except FanoutError as exc:
        raise SettingsError(str(exc)) from None
    problems = member_problems("RoleArn", s.role_arn) + (member_problems("OutputDataConfig.KmsKeyId", s.kms_key)
                                                         if s.kms_key else [])
    if problems:
        raise SettingsError("FANOUT_ROLE_ARN / FANOUT_KMS_KEY: " + "; ".join(problems))
    try:
        found = _resolved_family(svc)
    except FamilyError as exc:
        if s.model_family:
            raise SettingsError(f"FANOUT_MODEL_FAMILY: {exc}") from None
        found = None
        target.warnings.append(f"GPU memory fit not checked and tasks costed as sd: {exc}")
        log.warning("%s", target.warnings[-1])
    if found:
        target.family, target.variant = found
        probe = TaskSpec("job-defaults", "-", "-")      # no task override: the job's own settings
        problem = task_fit_problem(probe, s.job_hyperparameters, target.family, instance, PlanConfig())
        if problem:
            raise SettingsError(f"FANOUT_HYPERPARAMETERS on FANOUT_INSTANCE_TYPE: {problem}")
    return target


def _resolved_family(svc: Service) -> tuple[FamilySpec, str] | None:
    """resolve_family of the settings, kept on the Service once it succeeded."""
    s = svc.settings
    key = (s.model_family, s.model_uri)
    if key not in svc._families:
        found = resolve_family(s.model_family, s3=svc.objects.s3, model_uri=s.model_uri)
        if found is None:
            return None
        svc._families[key] = found
    return svc._families[key]


def _launch_config(svc: Service, count: int, target: LaunchTarget | None = None) -> LaunchConfig:
    s = svc.settings
    return LaunchConfig(image_uri=s.image_uri, role_arn=s.role_arn, model_uri=s.model_uri,
                        images_uri=svc.uri("requests") + "/", output_uri=svc.uri("jobs") + "/",
                        family=target.family_setting if target else "",
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
    has_images = {t.task_id: image_count(listed.get(t.instance_data, ())) > 0 for t in tasks}
    for t in [t for t in tasks if not has_images[t.task_id]]:
        outcomes.fail_claimed(svc, claimed[t.task_id], claimer, f"no images under {svc.uri('requests', t.instance_data)}/ "
                              f"(upload images before request.json; read: {', '.join(IMAGE_SUFFIXES)})", "no_images")
    return [t for t in tasks if has_images[t.task_id]], listed


def _valid(svc: Service, claimer: str, claimed: dict[str, dict], tasks: list[TaskSpec],
           target: LaunchTarget | None = None) -> list[TaskSpec]:
    """Tasks whose hyperparameters pass today's checks and whose training fits the GPU (the
    others FAILED with the reason), so that one request accepted under older rules, or asking
    for more than the instance type holds, cannot fail every batch it is put in."""
    good = []
    hp = svc.settings.job_hyperparameters
    for t in tasks:
        problems = task_name_problems([t], t.task_id) or task_value_problems([t], t.task_id, hp)
        if not problems and target is not None and target.family is not None:
            fit = task_fit_problem(t, hp, target.family, target.instance, PlanConfig())
            problems = [f"does not fit {target.instance.name}: {fit}"] if fit else []
        if problems:
            outcomes.fail_claimed(svc, claimed[t.task_id], claimer, "; ".join(problems), "invalid_hyperparameters")
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
            adopted += bool(outcomes.mark_launched(svc, item, claimer, job_name))
    return adopted


def launch_pending(svc: Service, claimer: str | None = None) -> dict[str, Any]:
    """Claim pending requests, launch K-instance jobs of similar-cost tasks, mark them LAUNCHED.

    A job that cannot be created hands its claims back (PENDING, with the reason)."""
    claimer = claimer or uuid.uuid4().hex
    republished, unpublished = svc.events.sweep(svc.ago(SWEEP_AFTER_S)) if svc.events else (0, [])
    target = launch_target(svc)              # before claiming: a bad setting claims nothing
    claimed, collided = _claim(svc, claimer)
    adopted = _adopt_created(svc, claimer, claimed)
    tasks = [replace(t, line=0) for item in claimed.values() for t in parse_tasks(item["task"])]
    tasks, listed = _with_images(svc, claimer, claimed, _valid(svc, claimer, claimed, tasks, target))
    hp = svc.settings.job_hyperparameters
    result: dict[str, Any] = {"jobs": [], "launched": adopted, "released": len(collided),
                              "failed": len(claimed) - len(tasks), "errors": collided + unpublished,
                              "republished": republished, "warnings": target.warnings}
    batches = launch_batches(tasks, svc.settings.max_tasks_per_job, svc.settings.max_instances, hp,
                             slots_per_host=target.slots, family=target.family or "sd", variant=target.variant)
    for batch, count in batches:
        keys = [claimed[t.task_id]["request_key"] for t in batch]
        # the retry counts are part of the name: a re-queued batch is a new job, a re-run launch is not
        salt = json.dumps({k: int(claimed[t.task_id].get("retries", 0)) for k, t in zip(keys, batch)}, sort_keys=True)
        try:
            job = prepare_job(batch, _launch_config(svc, count, target), salt=salt)
            _each(lambda k: svc.requests.note_launching(k, claimer, job.name, svc.clock()), keys)
            launched = svc.launcher.launch(job, svc.uri("requests") + "/", listed)
        except Exception as exc:   # edge of a batch: whatever failed, the claims go back with the reason
            for key in keys:
                svc.requests.release(key, claimer, f"launch failed: {exc}", svc.clock())
            result["released"] += len(keys)
            result["errors"].append(f"{type(exc).__name__}: {exc}")
            svc.telemetry.count("LaunchFailures", ReasonClass=reason_class(str(exc), "launch_error"))
            continue
        marked = [k for k, ok in zip(keys, _each(lambda t: outcomes.mark_launched(
            svc, claimed[t.task_id], claimer, launched.job_name), batch)) if ok]
        result["jobs"].append(launched.job_name)
        result["launched"] += len(marked)
        svc.telemetry.count("JobsLaunched")
        svc.telemetry.gauge("TasksPerJob", len(batch))
        if len(marked) < len(keys):      # our claim went stale and was taken over meanwhile
            result["errors"].append(f"{len(keys) - len(marked)} claim(s) lost before {launched.job_name} was recorded")
    outcomes.observe_pending(svc)
    return result


def _register(svc: Service, item: dict, job_name: str | None, now: str, model_tar: str | None = None,
              quality: Quality | None = None, **serving: Any) -> None:
    task = json.loads(item["task"])
    svc.models.register(item["user_id"], item["request_id"], now, artifact_uri=task.get("output_uri"),
                        model_tar_uri=model_tar, task_id=task["task_id"], job_name=job_name,
                        base_model=svc.settings.model_uri or None, request_key=item["request_key"],
                        **(model_fields(quality) if quality else {}), **serving)


def record_job_state(svc: Service, change: JobStateChange) -> dict[str, Any]:
    """A job ended: each of its requests COMPLETED or NEEDS_REVIEW (+ registered), retried
    (failed, or its model failed the quality gate and it asked for a retrain) or FAILED.
    Events EventBridge would not take raise PublishError once every request was recorded."""
    if not change.terminal:
        return {"job": change.job_name, "status": change.status, "ignored": True}
    items = svc.requests.by_job(change.job_name)
    if not items:      # not a job we launched: touch none of its buckets
        return {"job": change.job_name, "status": change.status, "ignored": True, "reason": "no request of ours is in this job"}
    # Our own layout, not the event's CheckpointConfig: we know where our jobs checkpoint.
    statuses = read_statuses(svc.objects, svc.uri("jobs", change.job_name, "checkpoints"))
    counts = {"completed": 0, "needs_review": 0, "quality_retried": 0, "PENDING": 0, "FAILED": 0, "unchanged": 0}
    unpublished: list[str] = []
    for item in items:
        task_id = json.loads(item["task"])["task_id"]
        status = statuses.get(task_id, {})
        if status.get("state") == "completed":
            settled = outcomes.settle(svc, item, status.get("quality"), change.job_name)
            counts[settled.outcome] += 1
            if settled.register:
                _register(svc, item, change.job_name, svc.clock(), change.model_artifacts, settled.quality)
            unpublished += outcomes.catch_up(svc, item, settled.written)
            continue
        reason = status.get("error") or f"job {change.status}: {change.failure_reason or 'task did not finish'}"
        fallback = "task_error" if status.get("error") else ("job_stopped" if change.status == "Stopped" else "job_failed")
        written = outcomes.fail_or_retry(svc, item, change.job_name, reason, fallback)
        counts[written["status"] if written else "unchanged"] += 1
        unpublished += outcomes.catch_up(svc, item, written)
    if unpublished:          # recorded, not published: the event's redelivery publishes them
        raise PublishError(f"job {change.job_name}: {len(unpublished)} request(s) with unpublished events: "
                           + "; ".join(unpublished)[:2000])
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
    manifest: dict = {}
    if item.get("status") not in outcomes.SETTLED:
        problem = _manifest_problem(svc, bucket, key, json.loads(item["task"]), manifest)
        if problem:
            log.warning("request %s: %s", item["request_key"], problem)
            svc.requests.note_launched(item["request_key"], f"artifact not accepted: {problem}", svc.clock())
            return "invalid"
    settled = outcomes.settle(svc, item, manifest.get("quality"))
    if settled.register:
        _register(svc, item, item.get("job_name"), svc.clock(), quality=settled.quality,
                  **serving_fields(bucket, key, manifest))
    unpublished = outcomes.catch_up(svc, item, settled.written)
    if unpublished:          # recorded, not published: the record fails, its redelivery publishes them
        raise PublishError(unpublished[0])
    return "duplicate" if settled.outcome == "unchanged" else settled.outcome


def serving_fields(bucket: str, key: str, manifest: dict) -> dict[str, str]:
    """What the inference server (serve/, docs/serving.md) needs to serve the model by its id:
    the LoRA file's URI, and from the manifest the family and the base's weights hash (it
    refuses a model of another family or base before downloading it)."""
    fields = {"adapter_uri": f"s3://{bucket}/{key[: -len('manifest.json')]}{LORA_FILE}"}
    if isinstance(manifest.get("family"), str):
        fields["family"] = manifest["family"]
    base = manifest.get("base_model")
    if isinstance(base, dict) and isinstance(base.get("weights_sha256"), str):
        fields["base_weights_sha256"] = base["weights_sha256"]
    return fields


def _manifest_problem(svc: Service, bucket: str, key: str, task: dict, found: dict) -> str | None:
    """Why the manifest at ``key`` does not vouch for a trained model of ``task`` (None: it
    does, and ``found`` then holds it)."""
    uri, task_id = f"s3://{bucket}/{key}", task["task_id"]
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
    # a retrained request (quality retry) trains with another seed: an earlier attempt's
    # manifest arriving late must not settle the new attempt
    wanted, got = (task.get("hyperparameters") or {}).get("seed"), _trained_seed(manifest)
    if wanted is not None and got is not None and str(got) != str(wanted):
        return f"{uri} is from an earlier attempt (seed {got}; the request now trains with seed {wanted})"
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    listed = {f.get("path"): f.get("bytes") for f in files if isinstance(f, dict)}
    if LORA_FILE not in listed:
        return f"{uri} does not list {LORA_FILE}"
    prefix = key[: -len("manifest.json")]
    present = _sizes_under(svc, bucket, prefix)
    missing = sorted(str(p) for p, size in listed.items() if p not in present or size not in (None, present[p]))
    if missing:
        return f"{uri} lists file(s) missing or of another size under s3://{bucket}/{prefix}: {', '.join(missing[:5])}"
    found.update(manifest)
    return None


def _trained_seed(manifest: dict) -> Any:
    """The seed the manifest's LoRA trained with: train writes the task's whole config under
    ``hyperparameters.config`` (train/task.py export)."""
    hp = manifest.get("hyperparameters")
    config = hp.get("config") if isinstance(hp, dict) else None
    return config.get("seed") if isinstance(config, dict) else None


def _sizes_under(svc: Service, bucket: str, prefix: str) -> dict[str, int]:
    """{path relative to prefix: size} of every object under it."""
    pages = svc.objects.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["Size"] for page in pages for o in page.get("Contents", [])}
