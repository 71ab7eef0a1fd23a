"""Requests the API accepts: what fanout builds agrees with CreateTrainingJob's service model."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import replace

import pytest
from botocore.validate import ParamValidator
from hypothesis import given, settings, strategies as st

from fanout import request as request_module
from fanout.api_rules import compiled, member_problems, operation_input, request_problems
from fanout.errors import RequestError, SettingsError
from fanout.request import LaunchConfig, prepare_job
from fanout.service import Service, launch_pending, register_upload
from fanout.settings import Settings
from fanout.tasks import TaskSpec

ROLE = "arn:aws:iam::123456789012:role/sagemaker"
CONFIG = LaunchConfig(image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/lora:1", role_arn=ROLE,
                      model_uri="s3://b/base/", images_uri="s3://b/images/", output_uri="s3://b/jobs", instance_count=2)
TASKS = [TaskSpec(f"t{i}", f"s{i}", "a photo of sks dog") for i in range(3)]


@pytest.mark.parametrize("change, named", [
    (dict(instance_type="ml.g5.3xlarge"), "instance_type: 'ml.g5.3xlarge' is not a SageMaker training instance type"),
    (dict(tags={"team": "avatars!"}), "Tags['team'].Value 'avatars!' does not match the API's pattern"),
    (dict(kms_key="alias/my.key"), "OutputDataConfig.KmsKeyId 'alias/my.key' does not match the API's pattern"),
    (dict(role_arn="SageMakerRole"), "RoleArn 'SageMakerRole' does not match the API's pattern"),
])
def test_the_four_requests_the_api_refuses_are_refused_before_sending(change, named):
    with pytest.raises(RequestError) as caught:
        prepare_job(TASKS, replace(CONFIG, **change))
    assert named in str(caught.value)
    if "instance_type" in change:
        assert "known: ml.g5.xlarge, ml.g5.2xlarge" in str(caught.value)


ACCEPTED = [
    dict(),
    dict(tags={"équipe": "avatars 2026", "a:b/c=d+e-f@g_h.i": "", "数字": "٣"}),   # letters, numbers, separators
    dict(kms_key="arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
         volume_kms_key="alias/training_volumes"),
    dict(role_arn="arn:aws-us-gov:iam::123456789012:role/service-role/AmazonSageMaker-ExecutionRole"),
    dict(spot=True, max_runtime_s=7200, retry_attempts=30, instance_type="ml.p5.48xlarge"),
    dict(warm_pool_s=3600, instance_type="ml.g6e.12xlarge", instance_count=8, volume_size_gb=1),
    dict(subnets=tuple(f"subnet-{i:08x}" for i in range(16)), security_groups=("sg-1", "sg-2"),
         network_isolation=True, inter_container_encryption=True),
    dict(hyperparameters={"gpus_per_host": 2, "export": "lora,kohya", "learning_rate": 1e-4}, instance_type="ml.g5.12xlarge",
         job_prefix="Team_avatars.prod/eu-west-1" + "x" * 80),
]


@pytest.mark.parametrize("change", ACCEPTED)
def test_botocores_validator_and_the_models_rules_accept_every_request_fanout_builds(change):
    request = prepare_job(TASKS, replace(CONFIG, **change)).request
    report = ParamValidator().validate(request, operation_input())
    assert not report.has_errors(), report.generate_report()
    assert request_problems(request) == []


def test_limits_fanout_keeps_as_constants_are_the_models():
    shape = operation_input()
    assert shape.members["HyperParameters"].metadata["max"] == request_module.MAX_HYPERPARAMETERS
    assert shape.members["HyperParameters"].value.metadata["max"] == request_module.MAX_HYPERPARAMETER_VALUE
    assert f"^{shape.members['TrainingJobName'].metadata['pattern']}$" == request_module.JOB_NAME_PATTERN
    from fanout.instances import INSTANCE_TYPES
    assert set(INSTANCE_TYPES) <= set(shape.members["ResourceConfig"].members["InstanceType"].enum)


def _tag_oracle(text: str) -> bool:
    """The tag rule as AWS words it: Unicode letters, numbers, separators and _ . : / = + - @."""
    return all(unicodedata.category(c)[0] in "LNZ" or c in "_.:/=+-@" for c in text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_the_translated_tag_pattern_agrees_with_the_rule_it_states(text):
    pattern = operation_input().members["Tags"].member.members["Value"].metadata["pattern"]
    assert bool(compiled(pattern).fullmatch(text)) == _tag_oracle(text)
    assert (member_problems("Tags", [{"Key": "k", "Value": text}]) == []) == _tag_oracle(text)


def test_java_classes_stay_ascii_and_reserved_tag_keys_are_refused():
    assert member_problems("RoleArn", "arn:aws:iam::١٢٣٤٥٦٧٨٩٠١٢:role/x")      # Arabic-Indic digits: not \d in Java
    assert "reserves for its own tags" in member_problems("Tags", [{"Key": "aws:owner", "Value": "x"}])[0]


def test_java_posix_classes_are_ascii_and_unknown_classes_are_refused():
    assert compiled(r"arn:[\p{Alnum}\-]+:lambda").fullmatch("arn:aws-cn:lambda")
    assert not compiled(r"[\p{Alnum}]+").fullmatch("é1")
    with pytest.raises(ValueError, match="Bogus"):
        compiled(r"[\p{Bogus}]")


# -- the serverless launcher: the same rules on its settings, before anything is claimed ------

def _svc(settings_: Settings, **env) -> Service:
    return Service.from_settings(replace(settings_, **env))


def _upload(svc: Service, user: str, body: dict) -> None:
    s3 = svc.objects.s3
    s3.put_object(Bucket=svc.settings.bucket, Key=f"requests/{user}/r/images/0.jpg", Body=b"jpg")
    s3.put_object(Bucket=svc.settings.bucket, Key=f"requests/{user}/r/request.json", Body=json.dumps(body).encode())
    assert register_upload(svc, svc.settings.bucket, f"requests/{user}/r/request.json") == "created"


@pytest.mark.parametrize("env, message", [
    (dict(role_arn="sagemaker"), "RoleArn 'sagemaker' does not match"),
    (dict(kms_key="alias/a.b"), "KmsKeyId 'alias/a.b' does not match"),
    (dict(instance_type="ml.g5.3xlarge"), "FANOUT_INSTANCE_TYPE: 'ml.g5.3xlarge' is not"),
    (dict(model_family="flux", hyperparameters='{"mixed_precision": "bf16", "base_quantization": "none"}'),
         "needs about"),
])
def test_launch_settings_the_api_or_the_gpu_refuse_claim_nothing(settings, env, message):
    svc = _svc(settings)
    _upload(svc, "u1", {"instance_prompt": "a photo of sks dog"})
    with pytest.raises(SettingsError, match=message):
        launch_pending(_svc(settings, **env))
    assert svc.requests.get("u1/r")["status"] == "PENDING"


def test_a_request_that_cannot_fit_fails_alone_and_the_family_comes_from_model_index_json(settings):
    svc = _svc(settings, hyperparameters='{"mixed_precision": "bf16", "gradient_checkpointing": true, '
                                          '"base_quantization": "nf4"}', model_uri="s3://fanout-test/base/flux/")
    svc.objects.s3.put_object(Bucket="fanout-test", Key="base/flux/model_index.json",
                              Body=json.dumps({"_class_name": "FluxPipeline"}).encode())
    _upload(svc, "u1", {"instance_prompt": "a photo of sks dog"})
    _upload(svc, "u2", {"instance_prompt": "a photo of sks cat",
                        "hyperparameters": {"resolution": 2048, "gradient_checkpointing": False}})
    result = launch_pending(svc)
    assert result["launched"] == 1 and result["failed"] == 1 and result["warnings"] == []
    failed = svc.requests.get("u2/r")
    assert failed["status"] == "FAILED" and "does not fit ml.g5.xlarge" in failed["reason"]
    assert "flux (FLUX.1-dev/-schnell) at 2048 px" in failed["reason"]
    # without a readable model_index.json (and no FANOUT_MODEL_FAMILY) it launches, and says what it could not check
    svc = _svc(settings, model_uri="s3://fanout-test/base/missing/")
    _upload(svc, "u3", {"instance_prompt": "a photo of sks owl"})
    result = launch_pending(svc)
    assert result["launched"] == 1 and "GPU memory fit not checked" in result["warnings"][0]
