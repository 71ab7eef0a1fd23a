"""Uploading a prepared job and creating it exactly once (thin adapters over boto3 clients).

Throttling is botocore's job: clients come from `Settings.client` with a retry mode, which
retries ThrottlingException with backoff. On top of that a process-wide limiter keeps
CreateTrainingJob at or below its documented 1 call/s. What botocore must NOT retry blindly
is decided here: ResourceInUse (our job already exists: accept it if its tags say so) and
ResourceLimitExceeded (no capacity: hand the tasks back with the reason).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from fanout.errors import CapacityError, ConflictError, LaunchError, RequestError
from fanout.request import BATCH_TAG, PreparedJob, images_manifest

CAPACITY_CODES = ("ResourceLimitExceeded", "CapacityError", "InsufficientCapacity")
# The photo types the trainer reads (train.photos.IMAGE_SUFFIXES; a test keeps the two equal):
# a folder holding only captions, .DS_Store or other files has no images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif")
IN_USE_CODES = ("ResourceInUse", "ResourceInUseException")


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') from an s3:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise RequestError(f"expected an s3://bucket/key URI, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class RateLimiter:
    """At most ``rate`` calls per second across threads (a one-token bucket)."""

    def __init__(self, rate: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


@dataclass(frozen=True)
class LaunchResult:
    job_name: str
    created: bool          # False: the job already existed and is ours (a retried submit)
    arn: str


class S3Objects:
    """The few S3 operations the launcher and status need; receives its client."""

    def __init__(self, s3):
        self.s3 = s3

    def put_text(self, uri: str, text: str, content_type: str = "application/json") -> None:
        bucket, key = split_s3(uri)
        self.s3.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType=content_type)

    def get_text(self, uri: str) -> str:
        bucket, key = split_s3(uri)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def keys(self, prefix_uri: str) -> Iterable[str]:
        """Every key under the prefix (paginated)."""
        bucket, prefix = split_s3(prefix_uri)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]


def image_keys(objects: S3Objects, images_uri: str, folders: Iterable[str]) -> dict[str, list[str]]:
    """{folder: image keys relative to images_uri} for the tasks' folders ([] when empty)."""
    base_bucket, base = split_s3(images_uri.rstrip("/") + "/")
    wanted = sorted(f for f in set(folders) if not f.startswith("s3://"))   # s3:// ones: the container fetches

    def listing(folder: str) -> list[str]:
        keys = objects.keys(f"s3://{base_bucket}/{base}{folder.strip('/')}/")
        return [k[len(base):] for k in keys if not k.endswith("/")]

    with ThreadPoolExecutor(max_workers=8) as pool:     # one LIST per folder; round trips dominate
        return dict(zip(wanted, pool.map(listing, wanted)))


def is_image(key: str) -> bool:
    """An object the trainer reads as a photo (by suffix, case-insensitive; hidden files are not)."""
    name = key.rsplit("/", 1)[-1]
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def image_count(keys: Iterable[str]) -> int:
    return sum(1 for k in keys if is_image(k))


class Launcher:
    """Uploads a PreparedJob's inputs and creates its training job once."""

    def __init__(self, sagemaker, s3, limiter: RateLimiter | None = None):
        self.sagemaker = sagemaker
        self.objects = S3Objects(s3)
        self.limiter = limiter or RateLimiter(1.0)

    def upload_inputs(self, job: PreparedJob, images_uri: str, listed: dict[str, list[str]] | None = None) -> None:
        """Task list and images manifest; an empty image folder is an error naming the task.
        ``listed`` (an image_keys result) skips listing when the caller already did."""
        folders = {t.instance_data: t.task_id for t in job.tasks}
        listed = image_keys(self.objects, images_uri, folders) if listed is None else listed
        empty = [f for f in folders if not f.startswith("s3://") and not image_count(listed.get(f, ()))]
        keys = [k for f in folders for k in listed.get(f, [])]
        if empty:
            names = ", ".join(f"{folders[f]!r} ({f})" for f in empty[:5])
            raise RequestError(f"no images under {images_uri.rstrip('/')}/<folder>/ for task(s) {names}")
        self.objects.put_text(job.layout.tasks_uri, job.tasks_text, "application/x-ndjson")
        self.objects.put_text(job.layout.images_manifest, images_manifest(images_uri, keys))

    def create(self, job: PreparedJob) -> LaunchResult:
        """CreateTrainingJob; ResourceInUse on a job of ours counts as success."""
        self.limiter.wait()
        try:
            arn = self.sagemaker.create_training_job(**job.request)["TrainingJobArn"]
            return LaunchResult(job.name, True, arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", str(exc))
            if code in IN_USE_CODES:
                return self._adopt(job)
            if code in CAPACITY_CODES:
                raise CapacityError(f"{code}: {message}") from exc
            raise LaunchError(f"CreateTrainingJob {job.name} failed: {code}: {message}") from exc

    def _adopt(self, job: PreparedJob) -> LaunchResult:
        """The name is taken: ours (same batch digest tag) means an earlier try got through."""
        arn = self.sagemaker.describe_training_job(TrainingJobName=job.name)["TrainingJobArn"]
        tags = {t["Key"]: t["Value"] for t in self.sagemaker.list_tags(ResourceArn=arn).get("Tags", [])}
        if tags.get(BATCH_TAG) != job.digest:
            raise ConflictError(f"job name {job.name} is taken by a job that is not this batch "
                                f"(tag {BATCH_TAG}={tags.get(BATCH_TAG)!r}); pass another --job-name")
        return LaunchResult(job.name, False, arn)

    def job_exists(self, name: str) -> bool:
        try:
            self.sagemaker.describe_training_job(TrainingJobName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
                return False
            raise
        return True

    def existing(self, job: PreparedJob) -> LaunchResult | None:
        """The job if it already exists (checked before uploading, so a name clash never
        overwrites another job's task list)."""
        return self._adopt(job) if self.job_exists(job.name) else None

    def launch(self, job: PreparedJob, images_uri: str, listed: dict[str, list[str]] | None = None) -> LaunchResult:
        """Upload inputs and create the job; an existing job of this batch is returned as is."""
        found = self.existing(job)
        if found:
            return found
        self.upload_inputs(job, images_uri, listed)
        return self.create(job)
