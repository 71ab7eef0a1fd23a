"""Launcher benchmark: requests launched per second of wall time under 30% throttling (moto).

    python scripts/bench_launch.py [--requests 300] [--tasks-per-job 10] [--throttle 0.3] [--rate 1.0]

A moto server on 127.0.0.1 stands in for S3, DynamoDB and SageMaker; 30% of CreateTrainingJob
calls (exactly, evenly spread) are answered ThrottlingException before reaching it (botocore's standard retry mode
retries them), and the launcher's own limiter allows `--rate` CreateTrainingJob calls per
second (SageMaker's documented default is 1). The measured phase is launch_pending runs until
the queue is empty; uploads happen before. Afterwards every request must be in exactly one job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fanout")]

from fanout_fakes import AtomicMotoServer, SageMakerFaults  # noqa: E402

from fanout.bootstrap import bootstrap  # noqa: E402
from fanout.service import Service, launch_pending, register_upload  # noqa: E402
from fanout.settings import Settings  # noqa: E402


def setup(args, url: str) -> Service:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    settings = Settings.from_env({
        "FANOUT_BUCKET": "bench", "FANOUT_IMAGE_URI": "img:1", "FANOUT_ROLE_ARN": "arn:aws:iam::123456789012:role/sm",
        "FANOUT_MODEL_URI": "s3://bench/base/", "FANOUT_MAX_INSTANCES": "8", "FANOUT_ENDPOINT_URL": url,
        "FANOUT_MAX_TASKS_PER_JOB": str(args.tasks_per_job), "FANOUT_MAX_JOBS_PER_RUN": "1000",
        "FANOUT_LAUNCH_RATE": str(args.rate), "FANOUT_REGION": "us-east-1"})
    svc = Service.from_settings(settings)
    bootstrap(settings, svc.objects.s3, svc.requests.client)
    for i in range(args.requests):
        user = f"user{i:05d}"
        svc.objects.s3.put_object(Bucket="bench", Key=f"requests/{user}/r/images/0.jpg", Body=b"jpg")
        svc.objects.put_text(f"s3://bench/requests/{user}/r/request.json", json.dumps({"instance_prompt": "a photo of sks"}))
        register_upload(svc, "bench", f"requests/{user}/r/request.json")
    return svc


def check(svc: Service, requests: int) -> tuple[int, int]:
    """(jobs, tasks in jobs); raises if any request is missing or launched twice."""
    sm = svc.launcher.sagemaker
    jobs = [j["TrainingJobName"] for page in sm.get_paginator("list_training_jobs").paginate()
            for j in page["TrainingJobSummaries"]]
    seen = []
    for job in jobs:
        text = svc.objects.get_text(f"s3://bench/jobs/{job}/input/tasks/tasks.jsonl")
        seen += [json.loads(line)["task_id"] for line in text.splitlines()]
    if len(seen) != len(set(seen)) or len(seen) != requests:
        raise SystemExit(f"FAILED: {len(seen)} task slots for {len(set(seen))} distinct of {requests} requests")
    return len(jobs), len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tasks-per-job", type=int, default=10)
    parser.add_argument("--throttle", type=float, default=0.3)
    parser.add_argument("--rate", type=float, default=1.0, help="client-side CreateTrainingJob calls per second")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = AtomicMotoServer()
    host, port = server.get_host_and_port()
    svc = setup(args, f"http://{host}:{port}")
    faults = SageMakerFaults(throttle=args.throttle, exact=True).attach(svc.launcher.sagemaker)
    start = time.perf_counter()
    runs = 0
    while svc.requests.claimable(svc.ago(3600), 1):
        launch_pending(svc)
        runs += 1
    wall = time.perf_counter() - start
    jobs, tasks = check(svc, args.requests)
    print(f"{tasks} requests in {jobs} jobs (<= {args.tasks_per_job} per job, K <= 8) in {wall:.1f} s over {runs} "
          f"launch_pending run(s): {tasks / wall:.1f} requests launched/s, {jobs / wall:.2f} jobs/s; "
          f"CreateTrainingJob calls {faults.calls}, throttled {faults.throttled} ({faults.throttled / faults.calls:.0%}), "
          f"duplicates 0, lost 0")
    server.stop()


if __name__ == "__main__":
    main()
