"""The pages of a real `fanout local` job, opened in headless Chromium (Debian's, offline).

The job is the kill -9 one (conftest.restarted_job): tiny base, 2 hosts, tasks that completed,
one that failed, one interrupted mid-training and resumed after the restart. Every page must
open with no console error and nothing fetched, every image decoded, every task present and
every link to a task page resolving; the same with quality scores, verdicts, slots and
screening findings present (samples of the other branches' contracts), and from S3 through
`fanout report JOB_NAME`. Screenshots: build/test-artifacts/report/.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from opt_ml import RESTART_STEPS, RESTART_TASKS
from page_checks import open_page
from report_samples import add_quality, add_screening, add_summary_fields

pytestmark = pytest.mark.slow
DELIVERED = sorted(set(RESTART_TASKS) - {"t5"})


def _visible_rows(page) -> list[str]:
    return page.evaluate("Array.from(document.querySelectorAll('#tasks tbody tr:not(.hidden)')).map(r => r.dataset.task)")


def _open_task_pages(chromium, job, prefix: str) -> dict[str, object]:
    """Every task page the job page links to, opened and checked like the job page."""
    pages = {}
    for href in sorted({h for h in job.links if h.endswith("/report.html")}):
        target = job.link_target(href)
        assert target.is_file(), f"{href} does not resolve"
        page = open_page(chromium, target, screenshot=f"{prefix}-task-{target.parent.name}")
        assert page.problems() == [], (target, page.problems())
        assert target.parent.name in page.title and page.page.inner_text("#task-id") == target.parent.name
        pages[target.parent.name] = page
    return pages


def test_a_restarted_jobs_pages_show_every_task_offline(restarted_job, chromium):
    work = restarted_job["work"]
    assert f"job report: " in restarted_job["output"] and (work / "report.html").is_file()
    job = open_page(chromium, work / "report.html", screenshot="job-restarted")
    assert job.problems() == [] and job.scripts == 1
    assert sorted(job.page.evaluate("Array.from(document.querySelectorAll('#tasks tbody tr')).map(r => r.dataset.task)")) \
        == sorted(RESTART_TASKS)
    assert job.images == len(DELIVERED)                      # the last preview of each task that trained
    pages = _open_task_pages(chromium, job, "restarted")
    assert sorted(pages) == sorted(RESTART_TASKS)

    # the failed task: on the failures table, and its page says why, with the lines before it
    assert "t5" in job.page.inner_text("#failures")
    failed = pages["t5"]
    assert "nobody-uploaded" in failed.page.inner_text("#error") and failed.page.locator("#log").count() == 1
    # which task ran when, on both hosts; the plan's estimate and the cost are there
    timeline = job.page.inner_text("#timeline")
    assert "algo-1" in timeline and "algo-2" in timeline
    assert "The plan expected" in job.page.inner_text("#makespan") and "$" in job.page.inner_text("#cost")

    for task_id in DELIVERED:   # every trained task: its previews, its loss curve, its exported LoRA
        page = pages[task_id]
        assert page.images >= 1 and page.page.locator("#loss-chart svg").count() == 1
        assert "pytorch_lora_weights.safetensors" in page.page.inner_text("#exports")
    for task_id in restarted_job["started"]:   # interrupted mid-training and resumed
        status = json.loads((work / "s3/checkpoints" / task_id / "status.json").read_text())
        assert status["attempts"] == 2 and status["timings"]["training"] > 0
        lines = (work / "s3/checkpoints" / task_id / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, RESTART_STEPS[task_id] + 1))


def test_the_pages_with_quality_scores_verdicts_slots_and_screening(restarted_job, chromium, tmp_path):
    from report.job import write_local_job_page
    from report.task import write_task_page

    work = tmp_path / "W"
    shutil.copytree(restarted_job["work"], work, symlinks=True)
    verdicts = {"t1": "passed", "t2": "needs_review", "t3": "failed_quality", "t4": "passed"}
    checkpoints = work / "s3" / "checkpoints"
    for task_id, verdict in verdicts.items():
        add_quality(checkpoints / task_id, verdict)
    add_screening(checkpoints / "t1")
    for summary in work.glob("s3/output/*/summary.json"):
        add_summary_fields(summary, verdicts)
    for task_id in RESTART_TASKS:
        write_task_page(checkpoints / task_id)

    job = open_page(chromium, write_local_job_page(work), screenshot="job-with-quality")
    assert job.problems() == []
    head = job.page.inner_text("#tasks thead")
    assert "verdict" in head and "slot" in head
    job.page.select_option("select[data-field='verdict']", "failed_quality")
    assert _visible_rows(job.page) == ["t3"]
    job.page.select_option("select[data-field='verdict']", "")
    job.page.select_option("select[data-field='state']", "failed")
    assert _visible_rows(job.page) == ["t5"]
    pages = _open_task_pages(chromium, job, "quality")
    assert "failed_quality" in pages["t3"].page.inner_text("#quality")
    assert pages["t3"].images >= 4 + 1                       # 4 evaluation images and the previews
    assert "near-duplicate of img1.jpg" in pages["t1"].text
    assert pages["t5"].page.locator("#quality").count() == 0  # a failed task has no scores


def test_fanout_report_reads_a_sagemaker_jobs_pages_from_s3(restarted_job, chromium, moto_s3, tmp_path):
    import boto3

    from fanout.cli import main

    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_s3, region_name="us-east-1")
    job_name, bucket = "fanout-0123456789abcdef", "report-test"
    s3.create_bucket(Bucket=bucket)
    work = restarted_job["work"]
    for path in (work / "s3" / "checkpoints").rglob("*"):   # what the hosts' checkpoint sync left in S3
        if path.is_file():
            key = f"jobs/{job_name}/checkpoints/{path.relative_to(work / 's3' / 'checkpoints').as_posix()}"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    archive = io.BytesIO()                                   # output/data of every host, as SageMaker packs it
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for summary in (work / "s3" / "output").glob("*/summary.json"):
            tar.add(summary, arcname=f"{summary.parent.name}/summary.json")
    s3.put_object(Bucket=bucket, Key=f"jobs/{job_name}/output/output.tar.gz", Body=archive.getvalue())
    tasks = next((work / "algo-1" / "input" / "data" / "tasks").glob("*.jsonl")).read_bytes()
    s3.put_object(Bucket=bucket, Key=f"jobs/{job_name}/input/tasks/tasks.jsonl", Body=tasks)
    channel = {"ChannelName": "tasks", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/jobs/{job_name}/input/tasks/"}}}
    sagemaker.create_training_job(
        TrainingJobName=job_name, RoleArn="arn:aws:iam::123456789012:role/sagemaker",
        AlgorithmSpecification={"TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/lora:1", "TrainingInputMode": "File"},
        InputDataConfig=[channel], OutputDataConfig={"S3OutputPath": f"s3://{bucket}/jobs/"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 3600}, HyperParameters={"max_train_steps": '"8"'},
        CheckpointConfig={"S3Uri": f"s3://{bucket}/jobs/{job_name}/checkpoints/"})

    out = tmp_path / "out"
    assert main(["report", job_name, "--out", str(out), "--upload", "--endpoint-url", moto_s3,
                 "--region", "us-east-1"]) == 0
    uploaded = s3.get_object(Bucket=bucket, Key=f"jobs/{job_name}/report.html")["Body"].read().decode()
    assert all(task_id in uploaded for task_id in RESTART_TASKS)   # beside checkpoints/: its links resolve there
    job = open_page(chromium, out / "report.html", screenshot="job-from-s3")
    assert job.problems() == [] and job.images == len(DELIVERED)
    assert "ml.g5.xlarge" in job.page.inner_text("#cost") and "as if" not in job.page.inner_text("#cost")
    assert sorted(_open_task_pages(chromium, job, "s3")) == sorted(RESTART_TASKS)
