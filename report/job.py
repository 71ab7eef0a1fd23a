"""The job page: ``W/report.html`` for a `fanout local` job, or a SageMaker job's page from S3.

    write_local_job_page(W)                          -> W/report.html (task pages in W/s3/checkpoints/)
    write_s3_job_page(sagemaker, s3, JOB, OUT_DIR)   -> OUT_DIR/report.html (+ the task pages beside it)

A SageMaker job's tasks are read where the job left them: ``<CheckpointConfig.S3Uri>/<task>/``
(status, metrics, previews, each task's own page) and the hosts' ``summary.json`` inside
``output.tar.gz`` once the job has ended. With ``upload`` the page is also put beside the
checkpoint prefix, where its relative links to ``checkpoints/<task>/report.html`` resolve.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path
from urllib.parse import quote

from report.cost import default_instance_type, price_for
from report.errors import ReportError
from report.files import LocalFiles, S3Files, read_json
from report.jobview import JobInputs, read_job, tasks_with_status
from report.render import now_text, render, write_page
from report.task import PAGE_NAME, render_task, write_task_page
from report.taskview import read_task


def render_job(inputs: JobInputs, *, price_per_hour: float | None = None) -> str:
    instance_type, as_if = inputs.instance_type, ""
    if price_per_hour is None and price_for(instance_type) is None and instance_type in ("", "local"):
        instance_type = default_instance_type()  # fanout local: priced as a submitted job's default instance
        as_if = f" (as if on {instance_type})"
    price = price_for(instance_type, price_per_hour)
    view = read_job(inputs, price, as_if=as_if)
    return render("job.html", job=view, price=price, as_if=as_if, generated_at=now_text())


# -- fanout local ------------------------------------------------------------------------------

def write_local_job_page(workdir: Path, *, price_per_hour: float | None = None) -> Path:
    """``W/report.html``; a task with a status but no page yet (a killed run's) gets one too."""
    inputs = local_inputs(workdir)
    checkpoints = Path(workdir) / "s3" / "checkpoints"
    missing = [t for t in tasks_with_status(inputs.checkpoints) if not (checkpoints / t / PAGE_NAME).is_file()]
    _say_pages(len(missing))
    for task_id in missing:
        write_task_page(checkpoints / task_id, task_id=task_id, job_href="../../../report.html")
    return write_page(Path(workdir) / PAGE_NAME, render_job(inputs, price_per_hour=price_per_hour))


def local_inputs(workdir: Path) -> JobInputs:
    w = Path(workdir)
    s3 = w / "s3"
    if not (s3 / "checkpoints").is_dir() and not (s3 / "output").is_dir():
        raise ReportError(f"{w} is not a `fanout local` workdir: it has no s3/checkpoints/ or s3/output/ "
                          "(pass the --workdir of a `fanout local` run, or a SageMaker job's name)")
    summaries = [doc for p in sorted((s3 / "output").glob("*/summary.json"))
                 if isinstance(doc := _json_file(p), dict)]
    trees = sorted((p.parent.parent.parent for p in w.glob("*/input/config/resourceconfig.json")), key=lambda p: p.name)
    config = _json_file(trees[0] / "input" / "config" / "resourceconfig.json") if trees else None
    hosts = list(config.get("hosts", [])) if isinstance(config, dict) else [s.get("host") for s in summaries]
    notes: list[str] = []
    tasks, order, hp = [], [], {}
    if trees:
        listed = sorted((trees[0] / "input" / "data" / "tasks").glob("*.json*"))
        if listed:
            tasks, order, note = _task_list(listed[0].read_text(), str(listed[0].name))
            notes += [note] if note else []
        found = _json_file(trees[0] / "input" / "config" / "hyperparameters.json")
        hp = found if isinstance(found, dict) else {}
    return JobInputs(
        name=f"{w.parent.name}/{w.name}", source=str(w), checkpoints=LocalFiles(s3 / "checkpoints"), summaries=summaries,
        task_ids=order, tasks=tasks, hyperparameters=hp, hosts=hosts,
        instance_type=(config or {}).get("current_instance_type", "local") if isinstance(config, dict) else "local",
        task_href=lambda tid: f"s3/checkpoints/{quote(tid)}/{PAGE_NAME}"
        if (s3 / "checkpoints" / tid / PAGE_NAME).is_file() else None,
        notes=notes,
    )


# -- a SageMaker job, from S3 -------------------------------------------------------------------

def write_s3_job_page(sagemaker, s3, job_name: str, out_dir: Path, *, upload: bool = False,
                      price_per_hour: float | None = None) -> tuple[Path, str | None]:
    """(the local page, the s3:// URI it was uploaded to or None)."""
    from fanout.launcher import split_s3

    inputs, checkpoint_uri = s3_inputs(sagemaker, s3, job_name)
    folder = checkpoint_uri.rstrip("/").rsplit("/", 1)[-1] or "checkpoints"
    out_dir = Path(out_dir)
    pages = {}
    with_status = tasks_with_status(inputs.checkpoints)
    print(f"reading {len(with_status)} task(s) from {inputs.source} ...", file=sys.stderr, flush=True)
    for task_id in with_status:
        pages[task_id] = _task_page_from_s3(inputs.checkpoints.sub(task_id), task_id,
                                            out_dir / folder / task_id / PAGE_NAME)
    inputs.task_href = lambda tid: f"{folder}/{quote(tid)}/{PAGE_NAME}" if tid in pages else None
    html = render_job(inputs, price_per_hour=price_per_hour)
    page = write_page(out_dir / PAGE_NAME, html)
    uploaded = None
    if upload:
        bucket, prefix = split_s3(checkpoint_uri.rstrip("/"))
        parent = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        s3.put_object(Bucket=bucket, Key=parent + PAGE_NAME, Body=html.encode("utf-8"),
                      ContentType="text/html; charset=utf-8")
        uploaded = f"s3://{bucket}/{parent}{PAGE_NAME}"
    return page, uploaded


def s3_inputs(sagemaker, s3, job_name: str) -> tuple[JobInputs, str]:
    from fanout.launcher import split_s3

    try:
        job = sagemaker.describe_training_job(TrainingJobName=job_name)
    except sagemaker.exceptions.ClientError as exc:
        raise ReportError(f"training job {job_name!r}: {exc}") from None
    checkpoint_uri = (job.get("CheckpointConfig") or {}).get("S3Uri")
    if not checkpoint_uri:
        raise ReportError(f"training job {job_name!r} has no CheckpointConfig: its tasks' status, previews and "
                          "pages are written nowhere S3 keeps (jobs made by `fanout submit` always have one)")
    bucket, prefix = split_s3(checkpoint_uri.rstrip("/") + "/")
    resources = job.get("ResourceConfig") or {}
    count = int(resources.get("InstanceCount") or 1)
    tasks, order, notes = [], [], []
    for text, name in _task_list_texts(s3, job):
        tasks, order, note = _task_list(text, name)
        notes += [note] if note else []
    summaries = _summaries(s3, job, job_name)
    if not summaries:
        notes.append("no host summary yet (output.tar.gz is written when the job ends): hosts and times "
                     "come from each task's status.json")
    return JobInputs(
        name=job_name, source=f"s3://{bucket}/{prefix}", checkpoints=S3Files(s3, bucket, prefix),
        summaries=summaries, task_ids=order, tasks=tasks, hyperparameters=job.get("HyperParameters") or {},
        hosts=[f"algo-{i + 1}" for i in range(count)], instance_type=resources.get("InstanceType", ""),
        billable_seconds=job.get("BillableTimeInSeconds"), notes=notes,
    ), checkpoint_uri


def _summaries(s3, job: dict, job_name: str) -> list[dict]:
    """The hosts' summary.json from ``<S3OutputPath>/<job>/output/output.tar.gz`` (None before the end)."""
    from fanout.launcher import split_s3

    base = (job.get("OutputDataConfig") or {}).get("S3OutputPath")
    if not base:
        return []
    bucket, key = split_s3(f"{base.rstrip('/')}/{job_name}/output/output.tar.gz")
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return []
    found = []
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith("summary.json"):
                try:
                    found.append(json.loads(tar.extractfile(member).read()))
                except ValueError:
                    continue
    return sorted((s for s in found if isinstance(s, dict)), key=lambda s: s.get("host_index", 0))


def _task_list_texts(s3, job: dict):
    from fanout.launcher import split_s3

    for channel in job.get("InputDataConfig") or ():
        if channel.get("ChannelName") != "tasks":
            continue
        bucket, prefix = split_s3(channel["DataSource"]["S3DataSource"]["S3Uri"])
        files = S3Files(s3, bucket, prefix.rsplit("/", 1)[0] if not prefix.endswith("/") else prefix)
        for rel in files.paths():
            if rel.endswith((".jsonl", ".json")):
                yield files.read_bytes(rel).decode("utf-8", "replace"), rel


def _task_page_from_s3(files: S3Files, task_id: str, target: Path) -> Path:
    """The task's own page when the job wrote one; otherwise one rendered from its files now
    (full-size images stay in S3, so this one has thumbnails only)."""
    raw = files.read_bytes(PAGE_NAME)
    if raw is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
        return target
    view = read_task(files, task_id=task_id, links=False)
    return write_page(target, render_task(view, job_href="../../" + PAGE_NAME))


# -- helpers ----------------------------------------------------------------------------------

def _say_pages(count: int) -> None:
    """Rendering a page takes a fraction of a second; hundreds of them deserve a line first."""
    if count > 20:
        print(f"writing {count} task pages the job did not write (about {count * 0.3:.0f} s) ...",
              file=sys.stderr, flush=True)


def _task_list(text: str, name: str):
    """(tasks as the container planned them, every task id in order, a note when the list is unreadable)."""
    from fanout.errors import TaskListError
    from fanout.tasks import parse_job_tasks

    try:
        tasks, _ = parse_job_tasks(text, source=name)  # the container's reading: bad tasks stay in the plan
    except TaskListError as exc:
        return [], [], f"the task list {name} has {len(exc.problems)} problem(s); the plan is not shown"
    return list(tasks), [t.task_id for t in tasks], None


def _json_file(path: Path):
    return read_json(LocalFiles(path.parent), path.name)
