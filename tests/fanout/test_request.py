"""CreateTrainingJob requests: API limits, options, deterministic names (pure, no AWS)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from fanout.errors import RequestError
from fanout.request import (BATCH_TAG, JOB_NAME_PATTERN, MAX_HYPERPARAMETER_VALUE, LaunchConfig, check_request,
                            images_manifest, job_name_for, prepare_job)
from fanout.tasks import TaskSpec, parse_tasks

CONFIG = LaunchConfig(image_uri="123.dkr.ecr.us-east-1.amazonaws.com/lora:1", role_arn="arn:aws:iam::123456789012:role/sm",
                      model_uri="s3://b/base/sd15", images_uri="s3://b/images/", output_uri="s3://b/jobs",
                      instance_count=4)


def tasks(n, **fields):
    return [TaskSpec(f"task-{i:04d}", f"subject-{i:04d}", "a photo of sks person", **fields) for i in range(n)]


def test_a_thousand_tasks_fit_the_api_limits_because_the_list_travels_in_its_channel():
    many = tasks(1000, validation_prompts=("a photo of sks person on the moon",) * 3, hyperparameters={"rank": 8})
    config = replace(CONFIG, instance_count=20, hyperparameters={"max_train_steps": 400, "learning_rate": 1e-4})
    job = prepare_job(many, config)
    request = job.request
    assert len(request["HyperParameters"]) == 2
    assert all(isinstance(v, str) and len(v) <= MAX_HYPERPARAMETER_VALUE for v in request["HyperParameters"].values())
    assert request["HyperParameters"]["learning_rate"] == "0.0001"
    assert len(json.dumps(request)) < 10_000                       # nothing scales with the task count
    assert len(parse_tasks(job.tasks_text)) == 1000                # the channel carries every task
    assert re.match(JOB_NAME_PATTERN, job.name) and len(job.name) <= 63
    assert sorted(len(h.task_ids) for h in job.plan.hosts) == [50] * 20


def test_request_carries_channels_checkpoints_metrics_and_tags():
    job = prepare_job(tasks(3), replace(CONFIG, class_uri="s3://b/class", tags={"team": "avatars"}))
    r = job.request
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in r["InputDataConfig"]}
    assert channels["tasks"]["S3Uri"] == f"s3://b/jobs/{job.name}/input/tasks/"
    assert channels["images"] == {"S3DataType": "ManifestFile", "S3Uri": f"s3://b/jobs/{job.name}/input/images.manifest",
                                  "S3DataDistributionType": "FullyReplicated"}
    assert channels["model"]["S3Uri"] == "s3://b/base/sd15/" and channels["class"]["S3Uri"] == "s3://b/class/"
    assert r["CheckpointConfig"] == {"S3Uri": f"s3://b/jobs/{job.name}/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    assert [m["Name"] for m in r["AlgorithmSpecification"]["MetricDefinitions"]] == ["train:loss", "train:step", "train:lr"]
    tags = {t["Key"]: t["Value"] for t in r["Tags"]}
    assert tags == {"team": "avatars", "fanout:owner": "fanout", BATCH_TAG: job.digest}
    assert r["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 4, "VolumeSizeInGB": 50}
    # the uploaded list pins each task to its planned host
    assert {t.task_id: t.host for t in job.tasks} == {tid: h.index for h in job.plan.hosts for tid in h.task_ids}


def test_all_options_reach_the_request():
    config = replace(CONFIG, spot=True, max_runtime_s=3600, retry_attempts=2, subnets=("subnet-1",),
                     security_groups=("sg-1",), inter_container_encryption=True, kms_key="alias/out",
                     volume_kms_key="alias/vol")
    r = prepare_job(tasks(2), config).request
    assert r["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert r["EnableManagedSpotTraining"] and r["EnableInterContainerTrafficEncryption"]
    assert r["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    assert r["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert r["OutputDataConfig"]["KmsKeyId"] == "alias/out" and r["ResourceConfig"]["VolumeKmsKeyId"] == "alias/vol"
    warm = prepare_job(tasks(2), replace(CONFIG, warm_pool_s=1800)).request
    assert warm["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800


@pytest.mark.parametrize("change, message", [
    (dict(spot=True, max_runtime_s=7200, max_wait_s=3600), "MaxWaitTimeInSeconds must be at least"),
    (dict(hyperparameters={f"sagemaker_h{i}": i for i in range(101)}), "HyperParameters has 101 entries; the API allows at most 100"),
    (dict(hyperparameters={"max_train_step": 400}), "unknown name(s) max_train_step; valid:"),
    (dict(hyperparameters={"export": "lora," * 500 + "lora"}), "is 2504 characters; the API allows at most 2500"),
    (dict(warm_pool_s=22000), "KeepAlivePeriodInSeconds is 22000; the API allows 0..21600"),   # botocore's model
    (dict(spot=True, warm_pool_s=60), "cannot be combined"),
    (dict(subnets=("subnet-1",)), "parameter VpcConfig.SecurityGroupIds, value: 0, valid min length: 1"),
    (dict(output_uri="/local/out"), "output_uri must be an s3:// URI"),
    (dict(role_arn=""), "role_arn is required"),
])
def test_requests_sagemaker_would_reject_fail_early_with_the_reason(change, message):
    with pytest.raises(RequestError, match=re.escape(message)):
        prepare_job(tasks(2), replace(CONFIG, **change))


def test_job_names_are_deterministic_valid_and_follow_the_content():
    a, b = prepare_job(tasks(5), CONFIG), prepare_job(tasks(5), CONFIG)
    assert a.name == b.name and a.request == b.request
    assert prepare_job(tasks(6), CONFIG).name != a.name
    assert prepare_job(tasks(5), replace(CONFIG, hyperparameters={"rank": 8})).name != a.name
    long = job_name_for("My_Team.avatars/" + "x" * 80, "f" * 64)
    assert re.match(JOB_NAME_PATTERN, long) and len(long) <= 63
    with pytest.raises(RequestError, match="TrainingJobName 'bad_name' does not match the API's pattern"):
        check_request({**a.request, "TrainingJobName": "bad_name"})


def test_network_isolation_turns_per_task_uploads_off_and_refuses_s3_images():
    many = tasks(2, output_uri="s3://b/models/x/")
    job = prepare_job(many, replace(CONFIG, network_isolation=True))
    assert job.request["EnableNetworkIsolation"] is True
    assert job.request["HyperParameters"]["network_isolation"] == "true"      # the container's setting
    assert all(t.output_uri is None for t in job.tasks) and "output_uri" not in job.tasks_text
    remote = [TaskSpec("t", "s3://other/images/t", "a photo")]
    with pytest.raises(RequestError, match="network isolation blocks S3"):
        prepare_job(remote, replace(CONFIG, network_isolation=True))


def test_images_manifest_names_only_the_given_keys_under_the_prefix():
    manifest = json.loads(images_manifest("s3://b/images", ["dog/2.jpg", "dog/1.jpg"]))
    assert manifest == [{"prefix": "s3://b/images/"}, "dog/1.jpg", "dog/2.jpg"]


def test_an_unknown_family_variant_is_refused_naming_the_valid_ones():
    with pytest.raises(RequestError, match=r"LaunchConfig\.family 'flux2-klein/bogus': flux2-klein variants are base, distilled"):
        prepare_job(tasks(1), replace(CONFIG, family="flux2-klein/bogus"))
