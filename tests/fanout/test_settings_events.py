"""Settings from the environment and event parsing: what a misconfigured Lambda reports."""

import pytest

from fanout.errors import EventError, SettingsError
from fanout.events import job_state_change, s3_objects
from fanout.settings import Settings


def test_settings_read_and_convert_fanout_variables():
    s = Settings.from_env({"FANOUT_BUCKET": "b", "FANOUT_MAX_INSTANCES": "16", "FANOUT_SPOT": "true",
                           "FANOUT_LAUNCH_RATE": "0.5", "FANOUT_RETRY_MODE": "adaptive"})
    assert (s.bucket, s.max_instances, s.spot, s.launch_rate, s.retry_mode) == ("b", 16, True, 0.5, "adaptive")
    assert s.instance_type == "ml.g5.xlarge" and s.requests_table == "fanout-requests"


@pytest.mark.parametrize("env, message", [
    ({}, "missing setting(s) FANOUT_BUCKET"),
    ({"FANOUT_BUCKET": "b", "FANOUT_MAX_INSTANCES": "many"}, "FANOUT_MAX_INSTANCES must be int, got 'many'"),
    ({"FANOUT_BUCKET": "b", "FANOUT_SPOT": "maybe"}, "FANOUT_SPOT must be true or false"),
    ({"FANOUT_BUCKET": "b", "FANOUT_RETRY_MODE": "aggressive"}, "standard, adaptive or legacy"),
    ({"FANOUT_BUCKET": "b", "FANOUT_METRICS_NAMESPACE": "AWS/Lambda"}, "FANOUT_METRICS_NAMESPACE must be a CloudWatch namespace of your own"),
    ({"FANOUT_BUCKET": "b", "FANOUT_MAX_QUALITY_RETRIES": "twice"}, "FANOUT_MAX_QUALITY_RETRIES must be int, got 'twice'"),
    ({"FANOUT_BUCKET": "b", "FANOUT_HYPERPARAMETERS": "max_train_steps=400"}, "FANOUT_HYPERPARAMETERS must be a JSON object"),
    ({"FANOUT_BUCKET": "b", "FANOUT_HYPERPARAMETERS": "{\"max_train_step\": 400}"}, "FANOUT_HYPERPARAMETERS: unknown name(s) max_train_step"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_s3_objects_from_eventbridge_and_encoded_keys():
    event = {"id": "evt-1", "detail-type": "Object Created",
             "detail": {"bucket": {"name": "b"}, "object": {"key": "requests/u/r/request.json"}}}
    [obj] = s3_objects(event)
    assert (obj.item_id, obj.bucket, obj.key) == ("evt-1", "b", "requests/u/r/request.json")
    direct = {"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "requests/u%3D1/r/my+photo.jpg"}}}]}
    assert [o.key for o in s3_objects(direct)] == ["requests/u=1/r/my photo.jpg"]


def test_a_non_sagemaker_event_is_refused_clearly():
    with pytest.raises(EventError, match="TrainingJobName is missing"):
        job_state_change({"detail-type": "Scheduled Event", "detail": {}})
