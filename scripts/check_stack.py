"""Read a deployed fanout stack back through the AWS APIs and check it is what the handlers read.

    python scripts/check_stack.py --prefix NAME_PREFIX [--zip build/lambda/fanout.zip] \
        [--region R] [--endpoint-url URL] [--no-monitoring]

Read-only (GetFunctionConfiguration, GetFunctionEventInvokeConfig, GetPolicy, GetBucketNotificationConfiguration,
DescribeTable, ListRuleNamesByTarget, DescribeRule, GetRole, DescribeEventBus, DescribeAlarms,
GetDashboard): safe against a real account.
The offline test runs it against the stack Terraform applied to moto. Checked:
- each function exists with its handler string, and (with --zip) that zip is the deployed code
  (CodeSha256) and the handler resolves in it;
- failed asynchronous invocations of each function go to an on-failure destination;
- the FANOUT_* variables of each function are exactly Settings names, the same on every
  function, and parse with Settings.from_env;
- FANOUT_BUCKET sends ObjectCreated notifications to on_upload / on_task_artifact whose
  prefix/suffix filters accept the keys those handlers accept, and S3 may invoke them;
- both tables have the keys and indexes `fanout bootstrap` creates;
- the rule targeting on_job_state_change matches SageMaker's state-change events for this
  stack's jobs in every terminal state (the handler parses each), a schedule wakes
  launch_pending, and EventBridge may invoke both;
- FANOUT_ROLE_ARN trusts sagemaker.amazonaws.com;
- FANOUT_EVENT_BUS (when set) is a bus that exists;
- unless --no-monitoring (alarms = false, dashboard = false): every alarm of the module exists,
  notifies a topic, and watches the metrics the handlers write (FANOUT_METRICS_NAMESPACE,
  service = FANOUT_JOB_PREFIX); the dashboard exists and shows that namespace and service.
- with --serve-endpoint NAME, the inference endpoint (serve.tf): its configuration's variant runs
  a model whose SERVE_* environment is serve.config.ServeConfig names and parses, reads models
  from this stack's bucket and table, whose role trusts SageMaker; an asynchronous one writes
  under the bucket; the variant scales on invocations per instance
  (+ DescribeEndpoint, DescribeEndpointConfig, DescribeModel, DescribeScalableTargets,
  DescribeScalingPolicies).
Prints one line per check; exit status 1 when any failed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fanout.bootstrap import models_table_spec, requests_table_spec  # noqa: E402
from fanout.events import ARTIFACT_KEY, PREVIEW_KEY, REQUEST_KEY, TERMINAL_STATES, job_state_change  # noqa: E402
from fanout.request import job_name_for  # noqa: E402
from fanout.settings import Settings, describe, make_client  # noqa: E402

HANDLERS = {"on_upload": "fanout.handlers.on_upload", "launch_pending": "fanout.handlers.launch_pending",
            "on_job_state_change": "fanout.handlers.on_job_state_change",
            "on_task_artifact": "fanout.handlers.on_task_artifact", "on_preview": "fanout.handlers.on_preview"}
SETTING_NAMES = frozenset(name for name, _, _ in describe())
# (handler, its key pattern, keys it accepts, keys it ignores: these need not reach it)
S3_ROUTES = (
    ("on_upload", REQUEST_KEY, ["requests/u1/r1/request.json", "requests/user@example.com/2026-12 #1/request.json"],
     ["requests/u1/r1/images/0.jpg", "models/u1/r1/manifest.json"]),
    # A nested manifest (models/u1/r1/lora/manifest.json) passes S3's prefix/suffix filters, which
    # cannot express depth; the handler itself ignores it, so it is in neither list.
    ("on_task_artifact", ARTIFACT_KEY, ["models/u1/r1/manifest.json"],
     ["models/u1/r1/pytorch_lora_weights.safetensors", "requests/u1/r1/request.json"]),
    # The .tmp-* folder a preview is written in before its rename passes the filters; the handler ignores it.
    ("on_preview", PREVIEW_KEY, ["jobs/fanout-0123456789abcdef/checkpoints/u1.r1/previews/step-000100/grid.png"],
     ["jobs/fanout-0123456789abcdef/checkpoints/u1.r1/status.json",
      "jobs/fanout-0123456789abcdef/checkpoints/u1.r1/previews/step-000100/0.png", "models/u1/r1/manifest.json"]),
)
# The module's alarms (infra/terraform/monitoring.tf): <prefix>-<name>; whether each watches our EMF metrics
ALARMS = {"oldest-pending": True, "dead-letters": False, "launcher-errors": False, "launch-throttling": True,
          "failure-rate": True, "events-unpublished": True}


def function_names(prefix: str) -> dict[str, str]:
    """The module's names: <prefix>-on-upload, ... (infra/terraform/main.tf)."""
    return {h: f"{prefix}-{h.replace('_', '-')}" for h in HANDLERS}


# --- pure helpers, also used by the test runner to route events the way AWS would --------------

def filter_accepts(notification: dict, key: str) -> bool:
    """Whether an S3 notification configuration's prefix/suffix rules pass ``key``."""
    rules = {r["Name"].lower(): r["Value"] for r in notification.get("Filter", {}).get("Key", {}).get("FilterRules", [])}
    return key.startswith(rules.get("prefix", "")) and key.endswith(rules.get("suffix", ""))


def pattern_matches(pattern: Any, event: Any) -> bool:
    """EventBridge pattern matching for what this stack uses: nested fields, value lists,
    {"prefix"}, {"anything-but"}, {"exists"}. Another operator is an error, not a guess."""
    if isinstance(pattern, dict):
        if not isinstance(event, dict):
            return False
        return all(_field_matches(want, event.get(name, _MISSING)) for name, want in pattern.items())
    raise ValueError(f"an event pattern is an object, got {pattern!r}")


_MISSING = object()


def _field_matches(want: Any, value: Any) -> bool:
    if isinstance(want, dict):
        return value is not _MISSING and pattern_matches(want, value)
    values = value if isinstance(value, list) else [value]
    return any(_value_matches(w, v) for w in want for v in values)


def _value_matches(want: Any, value: Any) -> bool:
    if not isinstance(want, dict):
        return value is not _MISSING and want == value
    (op, arg), = want.items()
    if op == "exists":
        return (value is not _MISSING) == arg
    if value is _MISSING:
        return False
    if op == "prefix":
        return isinstance(value, str) and value.startswith(arg)
    if op == "anything-but":
        return value not in (arg if isinstance(arg, list) else [arg])
    raise ValueError(f"event pattern operator {op!r} is not supported by this check")


def s3_event(bucket: str, key: str, sequencer: str = "0001") -> dict:
    """An S3 ObjectCreated:Put notification as Lambda receives it (keys URL-encoded, as S3 does)."""
    from urllib.parse import quote_plus
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                                "object": {"key": quote_plus(key, safe="/"), "sequencer": sequencer}}}]}


def job_event(job: str, status: str, bucket: str, reason: str = "") -> dict:
    """A "SageMaker Training Job State Change" event as EventBridge delivers it."""
    return {"version": "0", "id": f"check-{job}-{status}", "source": "aws.sagemaker",
            "detail-type": "SageMaker Training Job State Change", "account": "123456789012",
            "detail": {"TrainingJobName": job, "TrainingJobStatus": status, "FailureReason": reason,
                       "CheckpointConfig": {"S3Uri": f"s3://{bucket}/jobs/{job}/checkpoints/"},
                       "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/jobs/{job}/output/model.tar.gz"}}}


def code_sha256(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def handler_problem(zip_path: Path, handler: str, python: str = sys.executable) -> str | None:
    """None when ``handler`` (module.function) resolves to a callable inside the zip alone."""
    module, _, function = handler.rpartition(".")
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); m = importlib.import_module(sys.argv[2]); "
            "assert m.__file__.startswith(sys.argv[1]), m.__file__ + ' is not in the zip'; "
            "assert callable(getattr(m, sys.argv[3], None)), sys.argv[3] + ' is not a function of ' + sys.argv[2]")
    run = subprocess.run([python, "-I", "-c", code, str(zip_path), module, function], capture_output=True, text=True)
    return None if run.returncode == 0 else (run.stderr.strip().splitlines() or ["failed"])[-1]


# --- reading the stack ------------------------------------------------------------------------

@dataclass
class Report:
    lines: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        self.lines.append((bool(ok), what if ok else f"{what}: {why}"))
        return bool(ok)

    @property
    def failures(self) -> list[str]:
        return [text for ok, text in self.lines if not ok]


def _policy_allows(lam, function: str, principal: str, source_arn: str) -> bool:
    try:
        policy = json.loads(lam.get_policy(FunctionName=function)["Policy"])
    except lam.exceptions.ResourceNotFoundException:
        return False
    for st in policy.get("Statement", []):
        source = st.get("Condition", {}).get("ArnLike", {}).get("AWS:SourceArn")
        if st.get("Effect") == "Allow" and st.get("Principal", {}).get("Service") == principal and source in (None, source_arn):
            return True
    return False


def _failure_destination(lam, function: str) -> str | None:
    try:
        config = lam.get_function_event_invoke_config(FunctionName=function)
    except lam.exceptions.ResourceNotFoundException:
        return None
    return config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")


def check_functions(report: Report, lam, names: dict[str, str], zip_path: Path | None) -> dict[str, dict]:
    configs = {}
    for handler, name in names.items():
        try:
            configs[handler] = conf = lam.get_function_configuration(FunctionName=name)
        except lam.exceptions.ResourceNotFoundException:
            report.check(False, f"function {name}", "not found")
            continue
        report.check(conf["Handler"] == HANDLERS[handler], f"{name} handler is {HANDLERS[handler]}", f"it is {conf['Handler']!r}")
        if zip_path:
            report.check(conf["CodeSha256"] == code_sha256(zip_path), f"{name} runs {zip_path.name}",
                         f"deployed CodeSha256 {conf['CodeSha256']} is not the zip's {code_sha256(zip_path)}")
            problem = handler_problem(zip_path, conf["Handler"])
            report.check(problem is None, f"{name} handler resolves in the zip", problem or "")
        report.check(_failure_destination(lam, name), f"failed asynchronous invocations of {name} are kept",
                     "no on-failure destination (they would be dropped after Lambda's retries)")
        env = conf.get("Environment", {}).get("Variables", {})
        unknown = sorted(k for k in env if k not in SETTING_NAMES)
        report.check(not unknown, f"{name} FANOUT_* variables are Settings names",
                     f"{', '.join(unknown)} unknown (valid: {', '.join(sorted(SETTING_NAMES))})")
        try:
            Settings.from_env(env, require=("image_uri", "role_arn", "model_uri"))
            report.check(True, f"{name} environment parses with Settings.from_env")
        except Exception as exc:              # the report names what is wrong, whatever it is
            report.check(False, f"{name} environment parses with Settings.from_env", str(exc))
    envs = {h: c.get("Environment", {}).get("Variables", {}) for h, c in configs.items()}
    if envs:
        report.check(len({json.dumps(e, sort_keys=True) for e in envs.values()}) == 1,
                     "every function has the same FANOUT_* settings", f"they differ: {sorted(envs)}")
    return configs


def check_bucket(report: Report, s3, lam, bucket: str, configs: dict[str, dict]) -> None:
    notes = s3.get_bucket_notification_configuration(Bucket=bucket).get("LambdaFunctionConfigurations", [])
    for handler, pattern, accepted, ignored in S3_ROUTES:
        if handler not in configs:
            continue
        arn = configs[handler]["FunctionArn"]
        mine = [n for n in notes if n["LambdaFunctionArn"] == arn and any(e.startswith("s3:ObjectCreated:") for e in n["Events"])]
        if not report.check(mine, f"s3://{bucket} sends ObjectCreated to {handler}", "no notification for it"):
            continue
        assert all(pattern.match(k) for k in accepted) and not any(pattern.match(k) for k in ignored)
        missed = [k for k in accepted if not any(filter_accepts(n, k) for n in mine)]
        report.check(not missed, f"{handler} filters pass the keys it accepts", f"{missed} filtered out")
        extra = [k for k in ignored if any(filter_accepts(n, k) for n in mine)]
        report.check(not extra, f"{handler} filters keep other keys away", f"{extra} would invoke it")
        report.check(_policy_allows(lam, arn, "s3.amazonaws.com", f"arn:aws:s3:::{bucket}"),
                     f"S3 may invoke {handler}", "no lambda:InvokeFunction permission for s3.amazonaws.com")


def _schema(table: dict) -> dict:
    keys = {k["AttributeName"] for k in table["KeySchema"]}
    for index in table.get("GlobalSecondaryIndexes", []):
        keys |= {k["AttributeName"] for k in index["KeySchema"]}
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    return {"KeySchema": table["KeySchema"], "attributes": {k: types.get(k) for k in sorted(keys)},
            "indexes": {i["IndexName"]: i["KeySchema"] for i in table.get("GlobalSecondaryIndexes", [])}}


def check_tables(report: Report, dynamodb, settings: Settings) -> None:
    for spec in (requests_table_spec(settings.requests_table), models_table_spec(settings.models_table)):
        name = spec["TableName"]
        try:
            table = dynamodb.describe_table(TableName=name)["Table"]
        except dynamodb.exceptions.ResourceNotFoundException:
            report.check(False, f"table {name}", "not found")
            continue
        got, want = _schema(table), _schema(spec)
        report.check(got == want, f"table {name} keys and indexes are bootstrap's", f"got {got}, want {want}")


def check_rules(report: Report, events, lam, configs: dict[str, dict], settings: Settings) -> None:
    def rules_of(handler: str) -> list[dict]:
        names = events.list_rule_names_by_target(TargetArn=configs[handler]["FunctionArn"]).get("RuleNames", [])
        return [events.describe_rule(Name=n) for n in names]

    if "on_job_state_change" in configs:
        rules = [r for r in rules_of("on_job_state_change") if r.get("EventPattern") and r.get("State") == "ENABLED"]
        job = job_name_for(settings.job_prefix, "0123456789abcdef" * 4)
        for status in TERMINAL_STATES:
            event = job_event(job, status, settings.bucket)
            assert job_state_change(event).terminal       # the handler reads this shape
            hit = [r for r in rules if pattern_matches(json.loads(r["EventPattern"]), event)]
            report.check(hit, f"a job-state rule sends {status} events of {job} to on_job_state_change",
                         f"no enabled rule matches (rules: {[r['Name'] for r in rules]})")
            for rule in hit[:1]:
                report.check(_policy_allows(lam, configs["on_job_state_change"]["FunctionArn"], "events.amazonaws.com", rule["Arn"]),
                             f"EventBridge may invoke on_job_state_change from {rule['Name']}", "no permission")
    if "launch_pending" in configs:
        schedules = [r for r in rules_of("launch_pending") if r.get("ScheduleExpression") and r.get("State") == "ENABLED"]
        report.check(schedules, "a schedule wakes launch_pending", "no enabled scheduled rule targets it")
        for rule in schedules[:1]:
            report.check(_policy_allows(lam, configs["launch_pending"]["FunctionArn"], "events.amazonaws.com", rule["Arn"]),
                         f"EventBridge may invoke launch_pending from {rule['Name']}", "no permission")


def check_role(report: Report, iam, role_arn: str) -> None:
    role = iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
    doc = role["AssumeRolePolicyDocument"]
    doc = json.loads(unquote(doc)) if isinstance(doc, str) else doc
    services = [s for st in doc.get("Statement", []) if st.get("Effect") == "Allow" and "sts:AssumeRole" in
                (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
                for s in ([st["Principal"].get("Service")] if isinstance(st["Principal"].get("Service"), str)
                          else st["Principal"].get("Service", []))]
    report.check("sagemaker.amazonaws.com" in services, f"{role_arn} trusts sagemaker.amazonaws.com", f"it trusts {services}")


def check_events(report: Report, events, settings: Settings) -> None:
    if not settings.event_bus:
        return
    try:
        events.describe_event_bus(Name=settings.event_bus)
        report.check(True, f"FANOUT_EVENT_BUS {settings.event_bus} exists")
    except events.exceptions.ResourceNotFoundException:
        report.check(False, f"FANOUT_EVENT_BUS {settings.event_bus} exists", "no such bus: every PutEvents would fail")


def _watches_ours(alarm: dict, settings: Settings) -> bool:
    """The alarm's metric(s) are the handlers' own: their namespace, service = the job prefix."""
    stats = [q["MetricStat"]["Metric"] for q in alarm.get("Metrics", []) if q.get("MetricStat")]
    metrics = stats or [{"Namespace": alarm.get("Namespace"), "Dimensions": alarm.get("Dimensions", [])}]
    return all(m.get("Namespace") == settings.metrics_namespace and
               {"Name": "service", "Value": settings.job_prefix} in m.get("Dimensions", []) for m in metrics)


def check_monitoring(report: Report, cloudwatch, prefix: str, settings: Settings) -> None:
    found = {a["AlarmName"]: a for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=f"{prefix}-")
             for a in page.get("MetricAlarms", [])}
    for name, ours in ALARMS.items():
        if name == "events-unpublished" and not settings.event_bus:
            continue
        alarm = found.get(f"{prefix}-{name}")
        if not report.check(alarm, f"alarm {prefix}-{name} exists", "not found (deployed with alarms = false? then --no-monitoring)"):
            continue
        report.check(alarm.get("AlarmActions"), f"alarm {prefix}-{name} notifies a topic", "no alarm action")
        if ours:
            report.check(_watches_ours(alarm, settings), f"alarm {prefix}-{name} watches the handlers' metrics",
                         f"not {settings.metrics_namespace} with service={settings.job_prefix}")
    try:
        body = cloudwatch.get_dashboard(DashboardName=f"{prefix}-pipeline")["DashboardBody"]
    except cloudwatch.exceptions.ResourceNotFound:
        report.check(False, f"dashboard {prefix}-pipeline exists", "not found")
        return
    shown = f'"{settings.metrics_namespace}"' in body and f'"{settings.job_prefix}"' in body
    report.check(shown, f"dashboard {prefix}-pipeline shows the handlers' metrics",
                 f"no {settings.metrics_namespace} metric with service {settings.job_prefix}")


def check_serve(report: Report, client: Callable[[str], Any], endpoint: str, settings: Settings) -> None:
    """The inference endpoint of serve.tf reads back as serve/ and this stack expect."""
    from serve.config import ServeConfig

    sm = client("sagemaker")
    try:
        described = sm.describe_endpoint(EndpointName=endpoint)
    except sm.exceptions.ClientError as exc:
        report.check(False, f"endpoint {endpoint}", str(exc))
        return
    config = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    [variant] = config["ProductionVariants"][:1] or [{}]
    model = sm.describe_model(ModelName=variant.get("ModelName", ""))
    env = model["PrimaryContainer"].get("Environment", {})
    unknown = sorted(k for k in env if not k.startswith("SERVE_"))
    report.check(not unknown, f"{endpoint} environment is SERVE_* settings only", f"{unknown} unknown")
    try:
        cfg = ServeConfig.from_env(env)
        report.check(True, f"{endpoint} environment parses with ServeConfig.from_env")
    except Exception as exc:              # the report names what is wrong, whatever it is
        report.check(False, f"{endpoint} environment parses with ServeConfig.from_env", str(exc))
        return
    report.check(cfg.model_prefixes == (f"s3://{settings.bucket}/models/",),
                 f"{endpoint} reads models from s3://{settings.bucket}/models/ only", f"it reads {cfg.model_prefixes}")
    report.check(cfg.models_table == settings.models_table, f"{endpoint} looks model ids up in {settings.models_table}",
                 f"it reads {cfg.models_table!r}")
    report.check(cfg.base_model == settings.model_uri, f"{endpoint} serves the jobs' base {settings.model_uri}",
                 f"it serves {cfg.base_model}")
    check_role(report, client("iam"), model["ExecutionRoleArn"])
    output = config.get("AsyncInferenceConfig", {}).get("OutputConfig", {})
    if output:
        paths = [output.get("S3OutputPath", ""), output.get("S3FailurePath", "")]
        report.check(all(p.startswith(f"s3://{settings.bucket}/serving/") for p in paths),
                     f"{endpoint} (asynchronous) writes under s3://{settings.bucket}/serving/", f"it writes {paths}")
    resource = f"endpoint/{endpoint}/variant/{variant.get('VariantName')}"
    scaling = client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])["ScalableTargets"]
    report.check(targets, f"{resource} has a scalable target", "none registered")
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)["ScalingPolicies"]
    metrics = [p.get("TargetTrackingScalingPolicyConfiguration", {}).get("PredefinedMetricSpecification", {})
               .get("PredefinedMetricType") for p in policies]
    report.check("SageMakerVariantInvocationsPerInstance" in metrics,
                 f"{resource} scales on invocations per instance", f"its policies track {metrics}")


def check_stack(client: Callable[[str], Any], names: dict[str, str], zip_path: Path | None = None,
                monitoring: bool = True, prefix: str | None = None, serve_endpoint: str = "") -> Report:
    """Every check above; ``client(service)`` gives a boto3 client."""
    report, lam = Report(), client("lambda")
    configs = check_functions(report, lam, names, zip_path)
    env = next(iter(c.get("Environment", {}).get("Variables", {}) for c in configs.values()), {})
    try:
        settings = Settings.from_env(env, require=("role_arn",))
    except Exception as exc:
        report.check(False, "the functions' settings", str(exc))
        return report
    check_bucket(report, client("s3"), lam, settings.bucket, configs)
    check_tables(report, client("dynamodb"), settings)
    check_rules(report, client("events"), lam, configs, settings)
    check_role(report, client("iam"), settings.role_arn)
    check_events(report, client("events"), settings)
    if monitoring:
        check_monitoring(report, client("cloudwatch"), prefix or settings.job_prefix, settings)
    if serve_endpoint:
        check_serve(report, client, serve_endpoint, settings)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="fanout", help="the module's name_prefix (function names derive from it)")
    parser.add_argument("--zip", type=Path, default=None, help="the Lambda zip that should be deployed")
    parser.add_argument("--region", default="", help="AWS region (default: boto3's chain)")
    parser.add_argument("--endpoint-url", default="", help="AWS endpoint override (tests: a moto server)")
    parser.add_argument("--no-monitoring", action="store_true",
                        help="the stack was deployed with alarms = false and dashboard = false")
    parser.add_argument("--serve-endpoint", default="", help="also check this inference endpoint (serve_endpoint = true)")
    args = parser.parse_args(argv)
    report = check_stack(lambda service: make_client(service, args.region, args.endpoint_url),
                         function_names(args.prefix), args.zip, monitoring=not args.no_monitoring, prefix=args.prefix,
                         serve_endpoint=args.serve_endpoint)
    for ok, text in report.lines:
        print(("ok   " if ok else "FAIL ") + text)
    print(f"{len(report.lines) - len(report.failures)} checks ok, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
