"""A moto server on 127.0.0.1 for the fanout tests (over HTTP: boto3's real serialization,
retries and errors), reset before each test that uses it."""

from __future__ import annotations

import logging
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fanout_fakes import AtomicMotoServer  # noqa: E402

from fanout import handlers  # noqa: E402
from fanout.bootstrap import bootstrap  # noqa: E402
from fanout.service import Service  # noqa: E402
from fanout.settings import Settings  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def moto_url():
    server = AtomicMotoServer()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, moto_url):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).read()
    return moto_url


@pytest.fixture
def settings(aws_env) -> Settings:
    """Settings as the Lambdas would read them, with the bucket and tables bootstrapped."""
    env = {"FANOUT_BUCKET": "fanout-test", "FANOUT_IMAGE_URI": "123.dkr.ecr.us-east-1.amazonaws.com/lora:1",
           "FANOUT_ROLE_ARN": "arn:aws:iam::123456789012:role/sagemaker", "FANOUT_MODEL_URI": "s3://fanout-test/base/sd15/",
           "FANOUT_MAX_INSTANCES": "4", "FANOUT_MAX_TASKS_PER_JOB": "8", "FANOUT_MAX_JOBS_PER_RUN": "8", "FANOUT_LAUNCH_RATE": "200",
           "FANOUT_REGION": "us-east-1", "FANOUT_ENDPOINT_URL": aws_env}
    settings = Settings.from_env(env)
    bootstrap(settings, settings.client("s3"), settings.client("dynamodb"))
    # the base's model_index.json: launch_pending learns the family (costs, GPU-memory fit) from it
    settings.client("s3").put_object(Bucket="fanout-test", Key="base/sd15/model_index.json",
                                     Body=b'{"_class_name": "StableDiffusionPipeline"}')
    return settings


@pytest.fixture
def svc(settings, monkeypatch) -> Service:
    """The Service on those settings; the handlers use it (test_lifecycle_events.py overrides it)."""
    service = Service.from_settings(settings)
    monkeypatch.setattr(handlers, "_service", service)      # handlers use this Service
    return service
