"""The launcher against moto: ResourceInUse adoption, conflicts, throttling give-up."""

from __future__ import annotations

from dataclasses import replace

import boto3
import pytest
from fanout_fakes import SageMakerFaults

from fanout.errors import ConflictError, LaunchError
from fanout.launcher import Launcher, RateLimiter
from fanout.request import LaunchConfig, prepare_job
from fanout.settings import make_client
from fanout.tasks import TaskSpec

CONFIG = LaunchConfig(image_uri="img:1", role_arn="arn:aws:iam::123456789012:role/sm", model_uri="s3://launch-bucket/base",
                      images_uri="s3://launch-bucket/images", output_uri="s3://launch-bucket/jobs", instance_count=2)


@pytest.fixture
def launcher(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="launch-bucket")
    for name in ("a", "b", "c"):
        s3.put_object(Bucket="launch-bucket", Key=f"images/{name}/0.jpg", Body=b"x")
    return Launcher(make_client("sagemaker", max_attempts=2), s3, RateLimiter(100))


def job(*names):
    return prepare_job([TaskSpec(n, n, "a photo") for n in names], CONFIG)


def test_resource_in_use_for_our_batch_is_accepted_as_the_same_job(launcher):
    faults = SageMakerFaults().attach(launcher.sagemaker)
    first = launcher.launch(job("a", "b"), CONFIG.images_uri)
    # a second launcher that did not see the job yet (describe raced) gets ResourceInUse
    second = launcher.create(job("a", "b"))
    assert first.created and not second.created and first.arn == second.arn
    assert faults.created == 1 and faults.in_use == 1


def test_resource_in_use_by_another_batch_is_a_conflict(launcher):
    SageMakerFaults().attach(launcher.sagemaker)
    launcher.launch(job("a"), CONFIG.images_uri)
    impostor = replace(job("b"), name=job("a").name, request={**job("b").request, "TrainingJobName": job("a").name})
    with pytest.raises(ConflictError, match="not this batch"):
        launcher.create(impostor)


def test_throttling_that_never_ends_gives_up_with_the_reason_and_creates_nothing(launcher):
    faults = SageMakerFaults(throttle=1.0).attach(launcher.sagemaker)
    with pytest.raises(LaunchError, match="ThrottlingException"):
        launcher.launch(job("c"), CONFIG.images_uri)
    assert faults.calls == 3 and faults.created == 0   # first call + botocore max_attempts=2 retries, then stop
    assert launcher.sagemaker.list_training_jobs()["TrainingJobSummaries"] == []
