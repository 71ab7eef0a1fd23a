"""SageMaker string values mean the same to every consumer (one decoder), and every consumer
refuses unknown names the same way (one check), listing the valid ones."""

from __future__ import annotations

import pytest

from container.errors import JobConfigError
from container.settings import ContainerConfig
from container.taskconfig import job_train_config
from train.config import TrainConfig
from train.errors import ConfigError
from train.export import ExportConfig, ExportConfigError

BOOLEANS = [("on", True), ('"on"', True), ("off", False), ("True", True), ('"false"', False), ("1", True),
            ("0", False), ("yes", True), ('"no"', False), (True, True)]


def read_all(value):
    """The same boolean through the three configs that take SageMaker strings."""
    return (TrainConfig.from_dict({"train_text_encoder": value}).train_text_encoder,
            ExportConfig.from_dict({"drift_check": value}).drift_check,
            ContainerConfig.from_dict({"network_isolation": value}).network_isolation)


@pytest.mark.parametrize("value, expected", BOOLEANS)
def test_a_boolean_string_means_the_same_to_train_export_and_container(value, expected):
    assert read_all(value) == (expected, expected, expected)


def test_a_bad_boolean_is_refused_by_all_three_naming_the_field():
    for build, error, field in ((lambda v: TrainConfig.from_dict({"train_text_encoder": v}), ConfigError,
                                 "train_text_encoder"),
                                (lambda v: ExportConfig.from_dict({"drift_check": v}), ExportConfigError, "drift_check"),
                                (lambda v: ContainerConfig.from_dict({"network_isolation": v}), JobConfigError,
                                 "network_isolation")):
        with pytest.raises(error, match=field):
            build("maybe")


def test_numbers_decode_alike_bare_or_sdk_quoted():
    assert ExportConfig.from_dict({"drift_steps": '"3"'}).drift_steps == 3 == TrainConfig.from_dict(
        {"rank": '"3"'}).rank
    assert ContainerConfig.from_dict({"on_task_failure": '"fail"'}).on_task_failure == "fail"


@pytest.mark.parametrize("check, error", [
    (lambda: TrainConfig.from_dict({"max_stepz": 1}, source="S"), ConfigError),
    (lambda: ExportConfig.from_dict({"max_stepz": 1}, source="S"), ExportConfigError),
    (lambda: ContainerConfig.from_dict({"max_stepz": 1}, source="S"), JobConfigError),
    (lambda: job_train_config({"max_stepz": 1}, source="S"), ConfigError),
])
def test_every_consumer_refuses_an_unknown_name_the_same_way(check, error):
    with pytest.raises(error) as e:
        check()
    message = str(e.value)
    assert message.startswith("S: unknown ") and "'max_stepz'" in message and "; valid " in message
