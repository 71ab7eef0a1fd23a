"""FANOUT_SUBNETS / FANOUT_SECURITY_GROUPS reach the training jobs' VpcConfig (moto over HTTP)."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from fanout.bootstrap import bootstrap
from fanout.errors import SettingsError
from fanout.service import Service, launch_pending, register_upload
from fanout.settings import Settings

BASE = {"FANOUT_BUCKET": "vpc-test", "FANOUT_IMAGE_URI": "123456789012.dkr.ecr.us-east-1.amazonaws.com/t:1",
        "FANOUT_ROLE_ARN": "arn:aws:iam::123456789012:role/sm", "FANOUT_MODEL_URI": "s3://vpc-test/base/",
        "FANOUT_REGION": "us-east-1", "FANOUT_LAUNCH_RATE": "100"}


def test_settings_read_both_lists_and_refuse_one_without_the_other():
    s = Settings.from_env({**BASE, "FANOUT_SUBNETS": "subnet-a, subnet-b", "FANOUT_SECURITY_GROUPS": "sg-1"})
    assert s.vpc == (("subnet-a", "subnet-b"), ("sg-1",))
    assert Settings.from_env(BASE).vpc == ((), ())
    with pytest.raises(SettingsError, match="FANOUT_SUBNETS and FANOUT_SECURITY_GROUPS go together.*'subnet-a'"):
        Settings.from_env({**BASE, "FANOUT_SUBNETS": "subnet-a"})


def test_launch_pending_puts_the_jobs_in_the_vpc(moto_url):
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
    settings = Settings.from_env({**BASE, "FANOUT_ENDPOINT_URL": moto_url, "FANOUT_SUBNETS": "subnet-1,subnet-2",
                                  "FANOUT_SECURITY_GROUPS": "sg-9"})
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    svc = Service.from_settings(settings, session)
    bootstrap(settings, svc.objects.s3, svc.requests.client)
    svc.objects.s3.put_object(Bucket="vpc-test", Key="requests/u/r/images/0.jpg", Body=b"jpg")
    svc.objects.put_text("s3://vpc-test/requests/u/r/request.json", json.dumps({"instance_prompt": "a photo of sks u"}))
    assert register_upload(svc, "vpc-test", "requests/u/r/request.json") == "created"
    [job] = launch_pending(svc)["jobs"]
    desc = svc.launcher.sagemaker.describe_training_job(TrainingJobName=job)
    assert desc["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-9"]}
