"""Runs the deployed functions' code as Lambda would, because moto cannot without Docker.

For each invocation the runner reads the function back from the (moto) Lambda API, checks that
its CodeSha256 is the zip's, unpacks that zip as Lambda's task root, and runs the handler
string it reads there in a fresh interpreter whose environment is only the function's own
variables plus the credentials and endpoint a Lambda would have. Events are routed the way AWS
routes them, from what is deployed: an upload goes to the functions of the bucket's
notification configurations whose filters pass the key; an EventBridge event to the targets of
the rules whose pattern matches it; a schedule to its rule's targets. Every AWS call a handler
makes is recorded (a boto3 hook in the interpreter) for the least-privilege check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

from scripts_loader import load_script

check_stack = load_script("check_stack")

BOOT = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import boto3
calls = open(sys.argv[3], "a")
def record(params, model, **kwargs):   # every AWS call the handler makes, for the IAM check
    calls.write(json.dumps({"service": model.service_model.service_name, "operation": model.name,
                            "params": params}, default=str) + "\\n")
    calls.flush()
boto3.setup_default_session()
boto3.DEFAULT_SESSION.events.register("before-parameter-build", record)
module, _, name = sys.argv[2].rpartition(".")
handler = getattr(importlib.import_module(module), name)
assert sys.modules["fanout"].__file__.startswith(sys.argv[1]), "fanout must come from the task root"
print(json.dumps(handler(json.load(sys.stdin), None), default=str))
"""


class InvocationError(RuntimeError):
    """The handler raised (Lambda would report a function error); carries its stderr."""


class DeployedStack:
    def __init__(self, client: Callable[[str], Any], zip_path: Path, endpoint: str, workdir: Path):
        self.client, self.zip_path, self.endpoint = client, zip_path, endpoint
        self.task_root = workdir / "task"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(self.task_root)
        self.invocations: list[tuple[str, dict]] = []
        self.calls_dir = workdir / "calls"
        self.calls_dir.mkdir(parents=True, exist_ok=True)

    def calls(self, function_name: str) -> list[dict]:
        """Every AWS call the function made so far ({service, operation, params})."""
        path = self.calls_dir / f"{function_name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def _runtime_env(self, conf: dict) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
               "NO_PROXY": "127.0.0.1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "AWS_LAMBDA_FUNCTION_NAME": conf["FunctionName"], "LAMBDA_TASK_ROOT": str(self.task_root)}
        env.update(conf.get("Environment", {}).get("Variables", {}))
        return env

    def invoke(self, function: str, event: dict) -> dict:
        """Run one deployed function on ``event``; its JSON result."""
        conf = self.client("lambda").get_function_configuration(FunctionName=function)
        if conf["CodeSha256"] != check_stack.code_sha256(self.zip_path):
            raise AssertionError(f"{function} does not run {self.zip_path} (CodeSha256 {conf['CodeSha256']})")
        calls = self.calls_dir / f"{conf['FunctionName']}.jsonl"
        run = subprocess.run([sys.executable, "-I", "-c", BOOT, str(self.task_root), conf["Handler"], str(calls)],
                             input=json.dumps(event), capture_output=True, text=True, env=self._runtime_env(conf),
                             timeout=conf["Timeout"])
        if run.returncode != 0:
            raise InvocationError(f"{conf['FunctionName']} ({conf['Handler']}) failed:\n{run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        self.invocations.append((conf["FunctionName"], result))
        return result

    def upload(self, bucket: str, key: str, body: bytes) -> list[tuple[str, dict]]:
        """PutObject, then deliver the ObjectCreated notification to every function S3 would."""
        s3 = self.client("s3")
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        notes = s3.get_bucket_notification_configuration(Bucket=bucket).get("LambdaFunctionConfigurations", [])
        hits = [n["LambdaFunctionArn"] for n in notes if check_stack.filter_accepts(n, key)
                and any(e in ("s3:ObjectCreated:*", "s3:ObjectCreated:Put") for e in n["Events"])]
        return [(arn, self.invoke(arn, check_stack.s3_event(bucket, key))) for arn in hits]

    def _targets(self, rule: str) -> list[str]:
        return [t["Arn"] for t in self.client("events").list_targets_by_rule(Rule=rule)["Targets"]]

    def schedule(self, rule: str) -> list[tuple[str, dict]]:
        """A scheduled rule fires: each target gets EventBridge's Scheduled Event."""
        event = {"version": "0", "id": "scheduled", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        return [(arn, self.invoke(arn, event)) for arn in self._targets(rule)]

    def put_event(self, event: dict) -> list[tuple[str, dict]]:
        """PutEvents on the default bus: the targets of every enabled rule whose pattern matches."""
        rules = self.client("events").list_rules().get("Rules", [])
        hits = [r["Name"] for r in rules if r.get("EventPattern") and r.get("State") == "ENABLED"
                and check_stack.pattern_matches(json.loads(r["EventPattern"]), event)]
        return [(arn, self.invoke(arn, event)) for rule in hits for arn in self._targets(rule)]
