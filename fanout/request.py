"""CreateTrainingJob requests for one K-instance job (pure: no AWS calls here).

`prepare_job` turns validated tasks and a LaunchConfig into everything the launcher uploads
and sends: a deterministic job name, the job's task list (with the plan's `host` fields, so
the container runs exactly the plan the operator read), the S3 layout and the request dict.
`check_config` refuses what no request could fix (an instance type this project does not
know, more slots than GPUs, settings whose training cannot fit the GPU: `fanout.fit`);
`check_request` applies CreateTrainingJob's own rules, read from botocore's service model
(`fanout.api_rules`), before SageMaker would reject the call.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from fanout.api_rules import operation_input, request_problems
from fanout.errors import FanoutError, RequestError
from fanout.families import resolve_family
from fanout.fit import job_fit_problems
from fanout.hyperparameters import job_name_problems, job_value_problems, task_name_problems, task_value_problems
from fanout.instances import instance_type, slots_per_host
from fanout.metrics import metric_definitions
from fanout.plan import Plan, PlanConfig, plan_tasks
from fanout.tasks import TaskSpec, dump_tasks

# The service model's rules for these (tests/fanout/test_api_rules.py checks they are its values);
# kept as constants for messages and job_name_for, the model itself is what check_request applies.
JOB_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_VALUE = 2500
OWNER_TAG = "fanout:owner"
BATCH_TAG = "fanout:batch"


def _h(default: Any, text: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class LaunchConfig:
    """Everything about a job that is not the task list (defaults and help in one place)."""

    image_uri: str = _h("", "ECR URI of the training image")
    role_arn: str = _h("", "IAM role SageMaker assumes")
    model_uri: str = _h("", "s3:// base pipeline folder (the `model` channel)")
    images_uri: str = _h("", "s3:// prefix that task `instance_data` folders are relative to")
    output_uri: str = _h("", "s3:// prefix for task lists, manifests, checkpoints and model.tar.gz")
    class_uri: str | None = _h(None, "s3:// prefix of class images (the optional `class` channel)")
    eval_uri: str | None = _h(None, "s3:// prefix of the scorer models clip/, dino/, face/ (the optional `eval` "
                                    "channel; without it tasks are not evaluated)")
    instance_type: str = _h("ml.g5.xlarge", "training instance type (one of fanout.instances.INSTANCE_TYPES)")
    instance_count: int = _h(1, "instances (K); tasks are spread over their K x G GPU slots")
    family: str = _h("", "model family of the base (sd, sdxl, flux, flux2-klein, z-image, qwen-image; name/variant "
                         "allowed); empty: costs as sd and the GPU-memory fit is not checked (the CLI and the "
                         "launcher read it from model_uri's model_index.json)")
    volume_size_gb: int = _h(50, "EBS volume per instance (GB)")
    hyperparameters: Mapping[str, Any] = _h({}, "job-level training hyperparameters (not the task list)")
    max_runtime_s: int = _h(86400, "StoppingCondition.MaxRuntimeInSeconds")
    spot: bool = _h(False, "managed spot training (checkpoints make interruptions resumable)")
    max_wait_s: int = _h(0, "spot MaxWaitTimeInSeconds; 0 means twice max_runtime_s")
    warm_pool_s: int = _h(0, "warm pool KeepAlivePeriodInSeconds (0: off; the API's maximum applies)")
    retry_attempts: int = _h(0, "RetryStrategy.MaximumRetryAttempts for capacity errors (0: off)")
    subnets: tuple[str, ...] = _h((), "VpcConfig subnets (with security_groups)")
    security_groups: tuple[str, ...] = _h((), "VpcConfig security groups (with subnets)")
    network_isolation: bool = _h(False, "no network in the container; per-task uploads are then off")
    inter_container_encryption: bool = _h(False, "encrypt traffic between the job's instances")
    kms_key: str | None = _h(None, "KMS key id/ARN for the job output")
    volume_kms_key: str | None = _h(None, "KMS key id/ARN for the instance volumes")
    tags: Mapping[str, str] = _h({}, "extra tags on the job")
    job_prefix: str = _h("fanout", "job name prefix and the fanout:owner tag value")


@dataclass(frozen=True)
class JobLayout:
    """Where one job's inputs and outputs live in S3 (all under output_uri/<job_name>/)."""

    base: str
    tasks_prefix: str
    images_manifest: str
    checkpoints: str

    @classmethod
    def of(cls, output_uri: str, job_name: str) -> "JobLayout":
        base = f"{output_uri.rstrip('/')}/{job_name}"
        return cls(base, f"{base}/input/tasks/", f"{base}/input/images.manifest", f"{base}/checkpoints")

    @property
    def tasks_uri(self) -> str:
        return self.tasks_prefix + "tasks.jsonl"


@dataclass(frozen=True)
class PreparedJob:
    name: str
    digest: str
    plan: Plan
    tasks: tuple[TaskSpec, ...]
    tasks_text: str
    layout: JobLayout
    request: dict


def batch_digest(tasks_text: str, hyperparameters: Mapping[str, Any], salt: str = "") -> str:
    """Content hash of a batch: the same tasks and job hyperparameters give the same job."""
    blob = json.dumps({"tasks": tasks_text, "hp": dict(hyperparameters), "salt": salt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def job_name_for(prefix: str, digest: str) -> str:
    """`<prefix>-<16 hex>`: valid for SageMaker and at most 63 chars."""
    prefix = re.sub(r"[^a-zA-Z0-9-]", "-", prefix).strip("-")[:46] or "fanout"
    return f"{prefix}-{digest[:16]}"


def job_tasks(tasks: Sequence[TaskSpec], plan: Plan, network_isolation: bool) -> tuple[TaskSpec, ...]:
    """The task list the job receives: each task pinned to its planned host.

    Pinning means the container runs the plan the operator saw, even if its planner version
    differs. Under network isolation the container cannot reach S3, so per-task uploads go.
    """
    host_of = {tid: share.index for share in plan.hosts for tid in share.task_ids}
    out = []
    for t in tasks:
        t = replace(t, host=host_of[t.task_id])
        out.append(replace(t, output_uri=None) if network_isolation else t)
    return tuple(out)


def hyperparameter_strings(values: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker takes strings only; non-strings are JSON-encoded (the container reads both)."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _hyperparameters(config: LaunchConfig) -> dict[str, str]:
    """Job hyperparameters; under network isolation the container is told too (it then skips
    per-task uploads and s3:// images instead of failing on them: container.settings)."""
    values = dict(config.hyperparameters)
    if config.network_isolation:
        values["network_isolation"] = "true"
    return hyperparameter_strings(values)


def _channels(config: LaunchConfig, layout: JobLayout) -> list[dict]:
    def channel(name: str, uri: str, kind: str = "S3Prefix") -> dict:
        return {"ChannelName": name, "InputMode": "File",
                "DataSource": {"S3DataSource": {"S3DataType": kind, "S3Uri": uri,
                                                "S3DataDistributionType": "FullyReplicated"}}}
    channels = [channel("tasks", layout.tasks_prefix), channel("model", config.model_uri.rstrip("/") + "/"),
                channel("images", layout.images_manifest, "ManifestFile")]
    if config.class_uri:
        channels.append(channel("class", config.class_uri.rstrip("/") + "/"))
    if config.eval_uri:
        channels.append(channel("eval", config.eval_uri.rstrip("/") + "/"))
    return channels


def _resources(config: LaunchConfig) -> dict:
    resources: dict[str, Any] = {"InstanceType": config.instance_type, "InstanceCount": config.instance_count,
                                 "VolumeSizeInGB": config.volume_size_gb}
    if config.volume_kms_key:
        resources["VolumeKmsKeyId"] = config.volume_kms_key
    if config.warm_pool_s:
        resources["KeepAlivePeriodInSeconds"] = config.warm_pool_s
    return resources


def build_request(config: LaunchConfig, job_name: str, layout: JobLayout, digest: str) -> dict:
    """The CreateTrainingJob parameters (checked against the API limits)."""
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": config.max_runtime_s}
    if config.spot:
        stopping["MaxWaitTimeInSeconds"] = config.max_wait_s or 2 * config.max_runtime_s
    output: dict[str, str] = {"S3OutputPath": config.output_uri.rstrip("/") + "/"}
    if config.kms_key:
        output["KmsKeyId"] = config.kms_key
    tags = {**config.tags, OWNER_TAG: config.job_prefix, BATCH_TAG: digest}
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {"TrainingImage": config.image_uri, "TrainingInputMode": "File",
                                   "MetricDefinitions": metric_definitions()},
        "RoleArn": config.role_arn,
        "InputDataConfig": _channels(config, layout),
        "OutputDataConfig": output,
        "ResourceConfig": _resources(config),
        "StoppingCondition": stopping,
        "HyperParameters": _hyperparameters(config),
        "CheckpointConfig": {"S3Uri": layout.checkpoints + "/", "LocalPath": "/opt/ml/checkpoints"},
        "EnableNetworkIsolation": config.network_isolation,
        "EnableInterContainerTrafficEncryption": config.inter_container_encryption,
        "EnableManagedSpotTraining": config.spot,
        "Tags": [{"Key": k, "Value": str(v)} for k, v in sorted(tags.items())],
    }
    if config.subnets or config.security_groups:
        request["VpcConfig"] = {"Subnets": list(config.subnets), "SecurityGroupIds": list(config.security_groups)}
    if config.retry_attempts:
        request["RetryStrategy"] = {"MaximumRetryAttempts": config.retry_attempts}
    check_request(request)
    return request


def prepare_job(tasks: Sequence[TaskSpec], config: LaunchConfig, job_name: str | None = None,
                salt: str = "", plan_config: PlanConfig = PlanConfig()) -> PreparedJob:
    """Plan, name and build one job for ``tasks`` (pure; same input, same output)."""
    check_config(config, tasks, plan_config)
    slots = slots_per_host(instance_type(config.instance_type), config.hyperparameters.get("gpus_per_host"))
    family, variant = _family(config)
    plan = plan_tasks(tasks, config.instance_count, config.hyperparameters, plan_config, slots_per_host=slots,
                      family=family, variant=variant)
    pinned = job_tasks(tasks, plan, config.network_isolation)
    text = dump_tasks(pinned)
    digest = batch_digest(text, config.hyperparameters, salt)
    name = job_name or job_name_for(config.job_prefix, digest)
    layout = JobLayout.of(config.output_uri, name)
    return PreparedJob(name, digest, plan, pinned, text, layout, build_request(config, name, layout, digest))


def _family(config: LaunchConfig):
    """(family, variant) of the config: its explicit family, or sd when none was learned."""
    return resolve_family(config.family or "sd", where="LaunchConfig.family")


def check_config(config: LaunchConfig, tasks: Sequence[TaskSpec], plan_config: PlanConfig = PlanConfig()) -> None:
    """Option combinations SageMaker or the container cannot honour, said before any upload."""
    for name in ("image_uri", "role_arn", "model_uri", "images_uri", "output_uri"):
        if not getattr(config, name):
            raise RequestError(f"LaunchConfig.{name} is required (--{name.replace('_', '-')})")
    for name in ("model_uri", "images_uri", "output_uri", "class_uri", "eval_uri"):
        value = getattr(config, name)
        if value and not value.startswith("s3://"):
            raise RequestError(f"{name} must be an s3:// URI, got {value!r}")
    if config.network_isolation:
        remote = [t.task_id for t in tasks if t.instance_data.startswith("s3://") or (t.class_data or "").startswith("s3://")]
        if remote:
            raise RequestError(f"task {remote[0]!r} reads images from s3:// but network isolation blocks S3 "
                               "in the container; use folders relative to --images-uri")
    if config.spot and config.warm_pool_s:
        raise RequestError("warm pools (--warm-pool-seconds) cannot be combined with managed spot (--spot)")
    if not tasks:
        raise RequestError("a job needs at least one task")
    problems = job_name_problems(config.hyperparameters) + task_name_problems(tasks)
    problems = problems or (job_value_problems(config.hyperparameters)
                            + task_value_problems(tasks, job_values=config.hyperparameters))
    if problems:
        raise RequestError("; ".join(problems))
    try:
        instance = instance_type(config.instance_type, "instance_type")
        slots_per_host(instance, config.hyperparameters.get("gpus_per_host"))
        if config.family:
            family, _ = _family(config)
            problems = job_fit_problems(tasks, config.hyperparameters, family, instance, plan_config, "GPU memory")
    except FanoutError as exc:
        raise RequestError(str(exc)) from None
    if problems:
        raise RequestError("; ".join(problems))


def check_request(request: Mapping[str, Any]) -> None:
    """Raise RequestError for any value SageMaker's API would reject."""
    problems = _request_problems(request)
    if problems:
        raise RequestError("CreateTrainingJob request breaks API limits: " + "; ".join(problems))


def _request_problems(request: Mapping[str, Any]) -> list[str]:
    """botocore's validator (types, required members, minimums), then the model's maximums,
    enums and patterns (fanout.api_rules), then what the model cannot say."""
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(request, operation_input())
    problems = [line.strip() for line in report.generate_report().splitlines() if line.strip()] if report.has_errors() else []
    problems += request_problems(request)
    stop = request.get("StoppingCondition", {})
    if request.get("EnableManagedSpotTraining") and stop.get("MaxWaitTimeInSeconds", 0) < stop.get("MaxRuntimeInSeconds", 0):
        problems.append("spot MaxWaitTimeInSeconds must be at least MaxRuntimeInSeconds")
    resources = request.get("ResourceConfig", {})
    if resources.get("InstanceCount", 0) < 1 or resources.get("VolumeSizeInGB", 0) < 1:
        problems.append("InstanceCount and VolumeSizeInGB must be at least 1")
    return problems


def images_manifest(images_uri: str, keys: Sequence[str]) -> str:
    """A SageMaker ManifestFile: the prefix, then each image key relative to it.

    The `images` channel then holds exactly these objects, at the same relative paths the
    tasks' `instance_data` folders name, and nothing else from the bucket.
    """
    prefix = images_uri.rstrip("/") + "/"
    return json.dumps([{"prefix": prefix}, *sorted(keys)])
