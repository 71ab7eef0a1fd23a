"""The Terraform module, offline: init from the local provider mirror -> validate -> plan ->
apply to a moto server on 127.0.0.1 -> a second plan with no changes -> the stack check -> a
request through the deployed stack (its lifecycle events read from the app's queue) ->
destroy. About 100 s on 2 cores (most of it apply)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import boto3
import iam_coverage
import pytest
from lambda_runner import DeployedStack
from scripts_loader import load_script

from fanout import lifecycle
from fanout.service import task_id_for
from fanout.settings import make_client

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
check_stack = load_script("check_stack")
PREFIX, BUCKET = "fanout-test", "fanout-test-stack"


class Terraform:
    """`terraform -chdir=<root>` with nothing but 127.0.0.1 reachable: every other address goes
    to a proxy port where nothing listens, so a stray call fails instead of leaving the machine."""

    def __init__(self, tools, root: Path, endpoint: str, lambda_zip: Path):
        self.tools, self.root = tools, root
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_"))}
        self.env = tools.env(base)
        self.env.update(TF_VAR_endpoint=endpoint, TF_VAR_lambda_zip=str(lambda_zip), AWS_ACCESS_KEY_ID="testing",
                        AWS_SECRET_ACCESS_KEY="testing", HTTPS_PROXY="http://127.0.0.1:9",
                        HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")

    def __call__(self, *args: str, ok=(0,)) -> subprocess.CompletedProcess:
        run = subprocess.run([str(self.tools.command), f"-chdir={self.root}", *args, "-no-color"],
                             capture_output=True, text=True, env=self.env, timeout=600)
        assert run.returncode in ok, f"terraform {args[0]} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        return run


@pytest.fixture(scope="module")
def stack(terraform, moto_url, lambda_zip, tmp_path_factory):
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
    work = tmp_path_factory.mktemp("tf")
    shutil.copytree(ROOT / "infra" / "terraform", work / "module", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    shutil.copytree(ROOT / "tests" / "infra" / "stack", work / "stack", ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    tf = Terraform(terraform, work / "stack", moto_url, lambda_zip)
    init = tf("init", "-lockfile=readonly", "-input=false")
    tf("validate")
    tf("plan", "-input=false", "-out=plan.bin", "-detailed-exitcode", ok=(2,))
    plan = json.loads(tf("show", "-json", "plan.bin").stdout)
    tf("plan", "-input=false", "-out=off.bin", "-var=lifecycle_events=false", "-var=monitoring=false")
    plan_off = json.loads(tf("show", "-json", "off.bin").stdout)
    tf("apply", "-input=false", "plan.bin")
    outputs = json.loads(tf("output", "-json").stdout)["stack"]["value"]
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    state = {"tf": tf, "init": init.stdout, "plan": plan, "plan_off": plan_off, "out": outputs, "work": work, "destroyed": False, "endpoint": moto_url,
             "client": lambda service: make_client(service, "us-east-1", moto_url, session=session)}
    yield state
    if not state["destroyed"]:
        tf("destroy", "-auto-approve", "-input=false")


def test_init_takes_the_provider_from_the_local_mirror_at_the_locked_hash(stack):
    assert "Installing hashicorp/aws v3.39.0" in stack["init"]
    lock = (stack["work"] / "stack" / ".terraform.lock.hcl").read_text()
    assert lock == (ROOT / "tests" / "infra" / "stack" / ".terraform.lock.hcl").read_text()    # -lockfile=readonly held
    assert f"zh:{load_script('infra_tools').PROVIDER_SHA256}" in lock


def test_plan_creates_the_whole_stack(stack):
    created = [r["address"] for r in stack["plan"]["resource_changes"] if r["change"]["actions"] == ["create"]]
    count = lambda kind: sum(f"module.fanout.{kind}." in a for a in created)   # noqa: E731
    assert count("aws_lambda_function") == 5 and count("aws_iam_role") == 7 and count("aws_iam_role_policy") == 7
    assert count("aws_dynamodb_table") == 2 and count("aws_s3_bucket_notification") == 1
    assert count("aws_cloudwatch_event_rule") == 2 and count("aws_cloudwatch_event_target") == 2
    assert count("aws_lambda_permission") == 5 and count("aws_cloudwatch_log_group") == 5
    assert count("aws_ecr_repository") == 1 and count("aws_sqs_queue") == 1
    assert count("aws_lambda_function_event_invoke_config") == 5
    assert count("aws_cloudwatch_event_bus") == 1 and count("aws_sns_topic") == 1
    assert count("aws_cloudwatch_metric_alarm") == 6 and count("aws_cloudwatch_dashboard") == 1
    assert stack["out"]["image_uri"].endswith(".dkr.ecr.us-east-1.amazonaws.com/fanout-test-trainer:1")
    assert stack["out"]["event_bus"] == f"{PREFIX}-events" and stack["out"]["environment"]["FANOUT_EVENT_BUS"] == f"{PREFIX}-events"
    # the optional inference endpoint, asynchronous here: model, CloudFormation endpoint config, endpoint, scaling
    assert count("aws_sagemaker_model") == 1 and count("aws_sagemaker_endpoint") == 1
    assert count("aws_cloudformation_stack") == 1 and count("aws_sagemaker_endpoint_configuration") == 0
    assert count("aws_appautoscaling_target") == 1 and count("aws_appautoscaling_policy") == 1


def test_events_alarms_and_the_dashboard_are_optional(stack):
    """lifecycle_events = false, alarms = false, dashboard = false: planned without any of them."""
    created = [r["address"] for r in stack["plan_off"]["resource_changes"] if r["change"]["actions"] == ["create"]]
    count = lambda kind: sum(f"module.fanout.{kind}." in a for a in created)   # noqa: E731
    assert count("aws_lambda_function") == 5 and count("aws_dynamodb_table") == 2
    assert count("aws_cloudwatch_event_bus") == count("aws_sns_topic") == count("aws_cloudwatch_metric_alarm") == 0
    assert count("aws_cloudwatch_dashboard") == 0
    off, on = stack["plan_off"]["planned_values"]["outputs"], stack["plan"]["planned_values"]["outputs"]
    assert off["planned_event_bus"]["value"] == off["planned_alarm_topic"]["value"] == ""      # FANOUT_EVENT_BUS unset
    assert on["planned_event_bus"]["value"] == f"{PREFIX}-events"


def test_second_plan_shows_no_changes(stack):
    run = stack["tf"]("plan", "-input=false", "-detailed-exitcode")
    assert "No changes." in run.stdout


def test_a_real_time_endpoint_replaces_the_async_configuration_and_nothing_else(stack):
    """The other endpoint kind, planned against the applied stack (not applied: one cycle)."""
    stack["tf"]("plan", "-input=false", "-var", "serve_async=false", "-out=realtime.bin", "-detailed-exitcode", ok=(2,))
    plan = json.loads(stack["tf"]("show", "-json", "realtime.bin").stdout)
    changed = {r["address"]: r["change"]["actions"] for r in plan["resource_changes"] if r["change"]["actions"] != ["no-op"]}
    assert changed.pop("module.fanout.aws_sagemaker_endpoint_configuration.serve[0]") == ["create"]
    assert changed.pop("module.fanout.aws_cloudformation_stack.serve_async[0]") == ["delete"]
    assert set(changed) <= {"module.fanout.aws_sagemaker_endpoint.serve[0]", "module.fanout.aws_iam_role_policy.serve[0]",
                            "module.fanout.aws_appautoscaling_target.serve[0]", "module.fanout.aws_appautoscaling_policy.serve[0]"}


def test_stack_check_reads_back_what_the_handlers_expect(stack, lambda_zip):
    report = check_stack.check_stack(stack["client"], check_stack.function_names(PREFIX), lambda_zip,
                                     serve_endpoint=stack["out"]["serve_endpoint"])
    assert report.failures == []
    assert len(report.lines) >= 60
    checked = "\n".join(text for _, text in report.lines)
    assert f"FANOUT_EVENT_BUS {PREFIX}-events exists" in checked and f"alarm {PREFIX}-failure-rate watches the handlers' metrics" in checked
    assert f"dashboard {PREFIX}-pipeline shows the handlers' metrics" in checked and "on_preview filters pass the keys it accepts" in checked
    assert any(line.endswith("scales on invocations per instance") for _, line in report.lines)
    cli = _check_cli(stack, lambda_zip)
    assert cli.returncode == 0 and cli.stdout.splitlines()[-1] == f"{len(report.lines)} checks ok, 0 failed"


def _check_cli(stack, lambda_zip) -> subprocess.CompletedProcess:
    """scripts/check_stack.py as an operator runs it (credentials from the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_stack.py"), "--prefix", PREFIX, "--zip", str(lambda_zip),
                           "--region", "us-east-1", "--endpoint-url", stack["endpoint"],
                           "--serve-endpoint", stack["out"]["serve_endpoint"]], capture_output=True, text=True, env=env)


def _status(client, user: str, request: str) -> str:
    item = client("dynamodb").get_item(TableName=f"{PREFIX}-requests", Key={"request_key": {"S": f"{user}/{request}"}})
    return item["Item"]["status"]["S"]


def test_a_request_goes_through_the_deployed_stack(stack, lambda_zip, moto_url, tmp_path):
    client, out = stack["client"], stack["out"]
    deployed = DeployedStack(client, lambda_zip, moto_url, tmp_path)
    arn = out["function_arns"]
    for user in ("alice", "bob"):
        assert deployed.upload(BUCKET, f"requests/{user}/r1/images/0.jpg", b"jpg") == []     # filtered out by S3
        [(fn, result)] = deployed.upload(BUCKET, f"requests/{user}/r1/request.json",
                                         json.dumps({"instance_prompt": f"a photo of sks {user}"}).encode())
        assert fn == arn["on_upload"] and result["results"] == {f"requests/{user}/r1/request.json": "created"}
        assert _status(client, user, "r1") == "PENDING"
    [(_, again)] = deployed.upload(BUCKET, "requests/alice/r1/request.json", b'{"instance_prompt": "a photo of sks alice"}')
    assert again["results"] == {"requests/alice/r1/request.json": "duplicate"}       # S3 delivers at least once

    [(fn, launched)] = deployed.schedule(f"{PREFIX}-launch-pending")
    assert fn == arn["launch_pending"] and launched["launched"] == 2 and launched["errors"] == []
    [job] = launched["jobs"]
    assert job.startswith(f"{PREFIX}-") and _status(client, "alice", "r1") == _status(client, "bob", "r1") == "LAUNCHED"
    desc = client("sagemaker").describe_training_job(TrainingJobName=job)
    assert desc["VpcConfig"] == {"Subnets": [out["subnet_id"]], "SecurityGroupIds": [out["security_group"]]}
    assert desc["RoleArn"] == out["sagemaker_role"] and desc["AlgorithmSpecification"]["TrainingImage"] == out["image_uri"]
    assert desc["ResourceConfig"]["InstanceCount"] == 2 and desc["HyperParameters"]["max_train_steps"] == "400"

    # bob's first preview grid lands in the synced checkpoints (the images beside it reach nothing)
    step = f"jobs/{job}/checkpoints/bob.r1/previews/step-000005"
    assert deployed.upload(BUCKET, f"{step}/0.png", b"png") == []
    [(fn, shown)] = deployed.upload(BUCKET, f"{step}/grid.png", b"png")
    assert fn == arn["on_preview"] and shown["results"] == {f"{step}/grid.png": "recorded"}

    # alice's artifacts land first: COMPLETED and registered before the job ends
    # what the container uploads to output_uri: the LoRA (no notification for it), manifest.json last
    weights = b"safetensors bytes"
    assert deployed.upload(BUCKET, "models/alice/r1/pytorch_lora_weights.safetensors", weights) == []
    manifest = {"task_id": task_id_for("alice", "r1"), "step": 400,
                "files": [{"path": "pytorch_lora_weights.safetensors", "bytes": len(weights)}]}
    [(fn, done)] = deployed.upload(BUCKET, "models/alice/r1/manifest.json", json.dumps(manifest).encode())
    assert fn == arn["on_task_artifact"] and done["results"] == {"models/alice/r1/manifest.json": "completed"}
    assert _status(client, "alice", "r1") == "COMPLETED"

    # bob's status.json says completed; the job's end reaches on_job_state_change through the rule
    body = json.dumps({"state": "completed", "step": 400}).encode()
    assert deployed.upload(BUCKET, f"jobs/{job}/checkpoints/bob.r1/status.json", body) == []
    assert deployed.put_event(check_stack.job_event("other-job-1234", "Completed", BUCKET)) == []   # not ours
    [(fn, ended)] = deployed.put_event(check_stack.job_event(job, "Completed", BUCKET))
    assert fn == arn["on_job_state_change"] and ended["completed"] == 1
    assert _status(client, "bob", "r1") == "COMPLETED"
    models = client("dynamodb").scan(TableName=f"{PREFIX}-models")["Items"]
    assert sorted((m["user_id"]["S"], m["job_name"]["S"]) for m in models) == [("alice", job), ("bob", job)]

    # a handler killed between its write and its publish left carol's event in her outbox:
    # the next scheduled run publishes it
    ready = lifecycle.build(lifecycle.MODEL_READY, {"request_key": "carol/r1", "user_id": "carol", "request_id": "r1"},
                            "2026-12-01T10:00:00.000+00:00", job_name=job)
    client("dynamodb").put_item(TableName=f"{PREFIX}-requests", Item={
        "request_key": {"S": "carol/r1"}, "user_id": {"S": "carol"}, "request_id": {"S": "r1"}, "status": {"S": "COMPLETED"},
        "updated_at": {"S": "2026-12-01T10:00:00.000+00:00"}, "outbox": {"SS": [ready.encode()]},
        "outbox_at": {"S": "2026-12-01T10:00:00.000+00:00"}})
    [(_, swept)] = deployed.schedule(f"{PREFIX}-launch-pending")
    assert swept["republished"] == 1 and swept["errors"] == []

    # what the app's queue (a rule on the stack's bus) received, per request, in order
    got: dict[str, list[str]] = {}
    sqs = client("sqs")
    while messages := sqs.receive_message(QueueUrl=out["app_queue"], MaxNumberOfMessages=10).get("Messages", []):
        for m in messages:
            event = json.loads(m["Body"])
            assert event["source"] == "fanout"
            got.setdefault(event["detail"]["request_key"], []).append(event["detail-type"])
            sqs.delete_message(QueueUrl=out["app_queue"], ReceiptHandle=m["ReceiptHandle"])
    assert got == {"alice/r1": ["Request Accepted", "Request Launched", "Model Ready"],
                   "bob/r1": ["Request Accepted", "Request Launched", "Preview Ready", "Model Ready"],
                   "carol/r1": ["Model Ready"]}
    stack["deployed"] = deployed


# Granted but made by the Lambda service or runtime, not by the handler code the runner records
RUNTIME_ACTIONS = {"logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage", "xray:PutTraceSegments",
                   "xray:PutTelemetryRecords", "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                   "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
# Granted for a path the run above does not take: a job name already taken (Launcher._adopt)
ADOPT_ACTIONS = {"sagemaker:ListTags"}


def test_each_role_grants_what_its_function_called_and_nothing_else(stack):
    deployed, iam, lam = stack["deployed"], stack["client"]("iam"), stack["client"]("lambda")
    for handler, name in check_stack.function_names(PREFIX).items():
        role = lam.get_function_configuration(FunctionName=name)["Role"].rsplit("/", 1)[-1]
        policy = iam.get_role_policy(RoleName=role, PolicyName="fanout-handler")["PolicyDocument"]
        policy = json.loads(unquote(policy)) if isinstance(policy, str) else policy
        needs = {n for call in deployed.calls(name) for n in iam_coverage.needed(call, "us-east-1", "123456789012")}
        assert needs, f"{name} made no AWS call"
        assert [n for n in sorted(needs) if not iam_coverage.allows(policy, *n)] == [], f"{name}'s role lacks these"
        unused = iam_coverage.granted_actions(policy) - {a for a, _ in needs} - RUNTIME_ACTIONS - ADOPT_ACTIONS
        assert unused == set(), f"{name}'s role grants actions its code never used"
        if handler != "launch_pending":
            assert not iam_coverage.allows(policy, "sagemaker:CreateTrainingJob", f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{PREFIX}-x")
            assert not iam_coverage.allows(policy, "iam:PassRole", stack["out"]["sagemaker_role"])
        if handler != "on_upload":        # only on_upload reads request.json
            assert not iam_coverage.allows(policy, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/requests/u/r/request.json")


def test_the_endpoint_role_reads_models_and_nothing_of_the_training_side(stack):
    """IAM limited to the models prefix (and the base, the models table, its async outputs)."""
    iam = stack["client"]("iam")
    role = stack["out"]["serve_role"].rsplit("/", 1)[-1]
    policy = iam.get_role_policy(RoleName=role, PolicyName="fanout-serve")["PolicyDocument"]
    policy = json.loads(unquote(policy)) if isinstance(policy, str) else policy
    bucket = f"arn:aws:s3:::{BUCKET}"
    assert iam_coverage.allows(policy, "s3:GetObject", f"{bucket}/models/alice/r1/pytorch_lora_weights.safetensors")
    assert iam_coverage.allows(policy, "s3:GetObject", f"{bucket}/base/sd15/unet/config.json")
    assert iam_coverage.allows(policy, "dynamodb:GetItem", f"arn:aws:dynamodb:us-east-1:123456789012:table/{PREFIX}-models")
    assert iam_coverage.allows(policy, "s3:PutObject", f"{bucket}/serving/async-out/x.out")
    for action, resource in (("s3:GetObject", f"{bucket}/requests/alice/r1/request.json"),
                             ("s3:GetObject", f"{bucket}/jobs/j/checkpoints/t/status.json"),
                             ("s3:PutObject", f"{bucket}/models/alice/r1/pytorch_lora_weights.safetensors"),
                             ("dynamodb:PutItem", f"arn:aws:dynamodb:us-east-1:123456789012:table/{PREFIX}-models"),
                             ("dynamodb:GetItem", f"arn:aws:dynamodb:us-east-1:123456789012:table/{PREFIX}-requests")):
        assert not iam_coverage.allows(policy, action, resource), (action, resource)


def test_stack_check_and_plan_catch_a_drifted_stack(stack, lambda_zip):
    client = stack["client"]
    lam = client("lambda")
    name = f"{PREFIX}-on-upload"
    env = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": {**env, "FANOUT_BUKET": BUCKET}})
    s3 = client("s3")
    notes = s3.get_bucket_notification_configuration(Bucket=BUCKET)["LambdaFunctionConfigurations"]
    notes[0]["Filter"]["Key"]["FilterRules"] = [{"Name": "prefix", "Value": "requests/"}, {"Name": "suffix", "Value": ".jpg"}]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "LambdaFunctionConfigurations": [{k: v for k, v in n.items() if k != "Id"} for n in notes]})

    failures = check_stack.check_stack(client, check_stack.function_names(PREFIX), lambda_zip).failures
    assert any(f.startswith(f"{name} FANOUT_* variables are Settings names: FANOUT_BUKET unknown") for f in failures)
    assert any(f.startswith("on_upload filters pass the keys it accepts") for f in failures)
    assert any(f.startswith("every function has the same FANOUT_* settings") for f in failures)
    assert len(failures) == 4      # + "on_upload filters keep other keys away" (images now reach it)
    cli = _check_cli(stack, lambda_zip)
    assert cli.returncode == 1 and "FAIL fanout-test-on-upload FANOUT_* variables are Settings names" in cli.stdout
    stack["tf"]("plan", "-input=false", "-detailed-exitcode", "-refresh=true", ok=(2,))   # and Terraform sees the drift


def test_destroy_leaves_nothing(stack):
    stack["tf"]("destroy", "-auto-approve", "-input=false")
    stack["destroyed"] = True
    client = stack["client"]
    assert client("lambda").list_functions()["Functions"] == []
    assert client("dynamodb").list_tables()["TableNames"] == []
    assert client("s3").list_buckets()["Buckets"] == []
    assert [r["RoleName"] for r in client("iam").list_roles()["Roles"] if r["RoleName"].startswith(PREFIX)] == []
    assert client("events").list_rules()["Rules"] == []
    assert [b["Name"] for b in client("events").list_event_buses()["EventBuses"]] == ["default"]
    assert client("cloudwatch").describe_alarms()["MetricAlarms"] == []
    assert client("cloudwatch").list_dashboards()["DashboardEntries"] == []
    assert client("sns").list_topics()["Topics"] == []
    assert client("sagemaker").list_endpoints()["Endpoints"] == [] and client("sagemaker").list_models()["Models"] == []
