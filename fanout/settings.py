"""Settings for the serverless path and `fanout bootstrap`, read from FANOUT_* variables.

One frozen dataclass holds every default and its help text; `docs/fanout.md` lists them. The
Lambda handlers, `fanout bootstrap` and the tests all build their clients from one Settings
so they agree on names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from fanout.errors import SettingsError
from fanout.hyperparameters import job_name_problems

ENV_PREFIX = "FANOUT_"


def _s(default: Any, text: str, required: bool = False) -> Any:
    return field(default=default, metadata={"help": text, "required": required})


@dataclass(frozen=True)
class Settings:
    bucket: str = _s("", "bucket for requests/, images, task lists, checkpoints and models/", True)
    requests_table: str = _s("fanout-requests", "DynamoDB table of training requests (the queue)")
    models_table: str = _s("fanout-models", "DynamoDB table of trained models per user")
    image_uri: str = _s("", "ECR URI of the training image (launch_pending)")
    role_arn: str = _s("", "IAM role SageMaker assumes for the jobs (launch_pending)")
    model_uri: str = _s("", "s3:// URI of the base diffusers pipeline (the `model` channel)")
    instance_type: str = _s("ml.g5.xlarge", "training instance type (one of fanout.instances; its GPUs are each "
                                             "host's slots, its GPU memory is checked before a launch)")
    model_family: str = _s("", "model family of FANOUT_MODEL_URI (sd, sdxl, flux, flux2-klein, z-image, qwen-image); "
                               "empty: read from its model_index.json (needs s3:GetObject on it)")
    max_instances: int = _s(8, "most instances in one job (K)")
    max_tasks_per_job: int = _s(64, "most requests one job trains; a larger backlog is split")
    max_jobs_per_run: int = _s(4, "most jobs one launch_pending run creates (claims at most this many jobs' worth)")
    max_retries: int = _s(2, "times a failed request goes back to PENDING before it is FAILED")
    claim_timeout_s: int = _s(900, "a CLAIMED request older than this is reclaimed (launcher died)")
    volume_size_gb: int = _s(50, "EBS volume per instance")
    max_runtime_s: int = _s(86400, "StoppingCondition.MaxRuntimeInSeconds")
    spot: bool = _s(False, "managed spot training")
    max_wait_s: int = _s(0, "spot MaxWaitTimeInSeconds (0: twice max_runtime_s)")
    warm_pool_s: int = _s(0, "KeepAlivePeriodInSeconds of a managed warm pool (0: off)")
    job_prefix: str = _s("fanout", "prefix of job names and value of the fanout:owner tag")
    launch_rate: float = _s(1.0, "most CreateTrainingJob calls per second from one process")
    retry_mode: str = _s("standard", "botocore retry mode: standard or adaptive")
    max_attempts: int = _s(8, "botocore retries after the first try of an AWS call (throttling included)")
    hyperparameters: str = _s("", "job hyperparameters as JSON object, e.g. {\"max_train_steps\": 400}")
    kms_key: str = _s("", "KMS key for job output and volumes (empty: AWS managed)")
    subnets: str = _s("", "comma-separated VPC subnet ids for the training jobs (with FANOUT_SECURITY_GROUPS)")
    security_groups: str = _s("", "comma-separated VPC security group ids for the training jobs (with FANOUT_SUBNETS)")
    event_bus: str = _s("", "EventBridge bus (name or ARN) for the requests' lifecycle events (empty: no events)")
    max_quality_retries: int = _s(1, "times a request whose model failed its quality gate is retrained "
                                     "(on_quality_fail=retry) before it is NEEDS_REVIEW")
    metrics_namespace: str = _s("Fanout", "CloudWatch namespace of the handlers' embedded-metric-format metrics")
    region: str = _s("", "AWS region (empty: boto3's default chain)")
    endpoint_url: str = _s("", "AWS endpoint override (tests: a moto server)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, require: tuple[str, ...] = ()) -> "Settings":
        """Settings from FANOUT_<NAME> variables; ``require`` names fields that must be set."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(f.default))
        settings = cls(**values)
        missing = [n for n in ("bucket",) + tuple(require) if not getattr(settings, n)]
        if missing:
            names = ", ".join(ENV_PREFIX + n.upper() for n in missing)
            raise SettingsError(f"missing setting(s) {names}; see docs/fanout.md for every FANOUT_* variable")
        settings.job_hyperparameters   # a malformed FANOUT_HYPERPARAMETERS fails here, before any claim
        settings.vpc     # subnets without security groups (or the reverse) fail here, before any claim
        if not settings.metrics_namespace or settings.metrics_namespace.startswith("AWS/"):
            raise SettingsError(f"FANOUT_METRICS_NAMESPACE must be a CloudWatch namespace of your own (not AWS/...), "
                                f"got {settings.metrics_namespace!r}")
        if settings.retry_mode not in ("standard", "adaptive", "legacy"):
            raise SettingsError(f"FANOUT_RETRY_MODE must be standard, adaptive or legacy, got {settings.retry_mode!r}")
        return settings

    @property
    def job_hyperparameters(self) -> dict[str, Any]:
        try:
            values = json.loads(self.hyperparameters or "{}")
        except ValueError:
            values = None
        if not isinstance(values, dict):
            raise SettingsError(f"FANOUT_HYPERPARAMETERS must be a JSON object, got {self.hyperparameters!r}")
        problems = job_name_problems(values, "FANOUT_HYPERPARAMETERS")
        if problems:   # else every launch_pending run would claim, fail and hand the claims back
            raise SettingsError(problems[0])
        return values

    @property
    def vpc(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(subnets, security groups) for the jobs' VpcConfig; both empty: no VPC."""
        subnets = tuple(x.strip() for x in self.subnets.split(",") if x.strip())
        groups = tuple(x.strip() for x in self.security_groups.split(",") if x.strip())
        if bool(subnets) != bool(groups):
            raise SettingsError("FANOUT_SUBNETS and FANOUT_SECURITY_GROUPS go together (SageMaker's VpcConfig "
                                f"needs both), got subnets {self.subnets!r} and security groups {self.security_groups!r}")
        return subnets, groups

    def client(self, service: str, session=None):
        """A boto3 client with botocore's retry mode (throttling is retried with backoff)."""
        return make_client(service, self.region, self.endpoint_url, self.retry_mode, self.max_attempts, session)


def make_client(service: str, region: str = "", endpoint_url: str = "", retry_mode: str = "standard",
                max_attempts: int = 8, session=None):
    """boto3 client whose retries (ThrottlingException included) are botocore's."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": retry_mode, "max_attempts": max_attempts}, connect_timeout=10, read_timeout=60)
    kwargs: dict[str, Any] = {"config": config}
    if region:
        kwargs["region_name"] = region
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return (session or boto3).client(service, **kwargs)


def _convert(name: str, raw: str, kind: type) -> Any:
    var = ENV_PREFIX + name.upper()
    if kind is bool:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{var} must be {kind.__name__}, got {raw!r}") from None


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for the docs and `fanout bootstrap --help`."""
    return [(ENV_PREFIX + f.name.upper(), repr(f.default), f.metadata["help"]) for f in fields(Settings)]
