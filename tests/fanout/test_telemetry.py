"""The handlers' metrics: CloudWatch embedded-metric-format lines on stdout, read back as
CloudWatch would (namespace, dimension sets, names, units, values) and checked for user content."""

from __future__ import annotations

import datetime as dt
import json

from fanout_fakes import error_response
from test_serverless import upload_request

from fanout import handlers
from fanout.outcomes import observe_pending
from fanout.service import Service
from fanout.telemetry import REASON_CLASSES, Telemetry, reason_class

USER, REQUEST, PROMPT = "zq7user", "zq7req", "a photo of sks zq7dog"
UNITS = {"Count", "Seconds"}
DIMENSION_SETS = ([["service"]], [["service"], ["service", "ReasonClass"]], [["service"], ["service", "Verdict"]])


def emf_lines(text: str) -> list[dict]:
    """Every EMF line of a log; each must be a complete, valid EMF object."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]
    for line in lines:
        [directive] = line["_aws"]["CloudWatchMetrics"]
        assert isinstance(line["_aws"]["Timestamp"], int) and directive["Namespace"] == "Fanout"
        assert directive["Dimensions"] in DIMENSION_SETS
        names = {m["Name"] for m in directive["Metrics"]}
        assert all(m["Unit"] in UNITS for m in directive["Metrics"])
        dims = {d for dset in directive["Dimensions"] for d in dset}
        assert set(line) == {"_aws"} | dims | names          # nothing else rides along
        assert all(isinstance(line[n], list) and all(isinstance(v, float) for v in line[n]) for n in names)
        assert line["service"] == "fanout" and line.get("ReasonClass", "other") in REASON_CLASSES
    return lines


def totals(lines: list[dict]) -> dict[tuple, float]:
    """{(metric, dimension value or None): summed values}."""
    out: dict[tuple, float] = {}
    for line in lines:
        for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            key = (m["Name"], line.get("ReasonClass") or line.get("Verdict"))
            out[key] = out.get(key, 0) + sum(line[m["Name"]])
    return out


def test_handler_metrics_are_emf_lines_without_user_content(settings, monkeypatch, capsys):
    svc = Service.from_settings(settings)
    monkeypatch.setattr(handlers, "_service", svc)
    throttled = []

    def throttle_once(request, **kwargs):         # CreateTrainingJob throttled once, then accepted
        throttled.append(1)
        return error_response(request.url, "ThrottlingException", "Rate exceeded") if len(throttled) == 1 else None

    svc.launcher.sagemaker.meta.events.register("before-send.sagemaker.CreateTrainingJob", throttle_once)
    capsys.readouterr()
    handlers.on_upload(upload_request(svc, USER, REQUEST, instance_prompt=PROMPT))
    handlers.on_upload(upload_request(svc, USER, "other", hyperparameters={"resolution": 500}))
    handlers.on_upload(upload_request(svc, "nophotos", "r", images=0))
    handlers.launch_pending({})
    out = capsys.readouterr().out
    lines = emf_lines(out)
    got = totals(lines)
    assert got[("RequestsAccepted", None)] == 2 and got[("RequestsLaunched", None)] == 1
    assert got[("RequestsFailed", "invalid_request")] == 1 and got[("RequestsFailed", "no_images")] == 1
    assert got[("JobsLaunched", None)] == 1 and got[("TasksPerJob", None)] == 1
    assert got[("LaunchThrottles", None)] == 1 and got[("LaunchRetries", None)] == 1
    assert got[("PendingRequests", None)] == 0 and ("OldestPendingAge", None) in got
    assert ("UploadToLaunchTime", None) in got
    # one line per invocation and dimension set; a failure's class is also under [service]
    failed = [line for line in lines if "RequestsFailed" in line]
    assert all(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"], ["service", "ReasonClass"]] for line in failed)
    for secret in (USER, REQUEST, "zq7dog", "resolution", "nophotos"):
        assert secret not in out


def test_the_pending_gauge_counts_waiting_requests_and_the_oldest_age(settings, monkeypatch, capsys):
    svc = Service.from_settings(settings)
    for user in ("a", "b"):
        svc.requests.put_new(user, "r", {"task_id": user}, svc.clock())
    svc.requests.claim("a/r", "someone", svc.clock(), svc.ago(3600))      # another launcher has that one
    later = (dt.datetime.fromisoformat(svc.clock()) + dt.timedelta(minutes=5)).isoformat(timespec="milliseconds")
    monkeypatch.setattr(svc, "clock", lambda: later)
    capsys.readouterr()
    assert observe_pending(svc)[0] == 1
    svc.telemetry.flush()
    got = totals(emf_lines(capsys.readouterr().out))
    assert got[("PendingRequests", None)] == 1 and 300 <= got[("OldestPendingAge", None)] < 330


def test_reason_classes_are_few_and_never_the_reason_text():
    assert reason_class("CUDA out of memory. Tried to allocate 2.00 GiB", "task_error") == "out_of_memory"
    assert reason_class("launch failed: ResourceLimitExceeded: ml.g5.xlarge quota", "launch_error") == "capacity"
    assert reason_class("job Stopped: MaxRuntimeInSeconds exceeded", "job_stopped") == "timeout"
    assert reason_class("job Failed: AlgorithmError: exit 1", "job_failed") == "job_failed"
    assert reason_class("anything", "a reason class nobody knows") == "other"


def test_counts_sum_within_an_invocation_and_timings_keep_each_value(capsys):
    t = Telemetry("Fanout", "fanout")
    t.count("RequestsFailed", ReasonClass="no_images")
    t.count("RequestsFailed", 2, ReasonClass="no_images")
    t.seconds("UploadToLaunchTime", 3.5)
    t.seconds("UploadToLaunchTime", 7.0)
    assert t.flush() == 2 and t.flush() == 0
    got = emf_lines(capsys.readouterr().out)
    by_dims = {tuple(map(tuple, line["_aws"]["CloudWatchMetrics"][0]["Dimensions"])): line for line in got}
    assert by_dims[(("service",), ("service", "ReasonClass"))]["RequestsFailed"] == [3.0]
    assert by_dims[(("service",),)]["UploadToLaunchTime"] == [3.5, 7.0]
