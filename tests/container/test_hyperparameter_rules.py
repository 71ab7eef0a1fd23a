"""fanout checks hyperparameter values at upload with a copy of train's rules (fanout cannot
import train): the copy must give train.config.TrainConfig's verdict on every sample value."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from fanout import hyperparameters as fanout_hp
from train import config as train_config
from train.config import HYPERPARAMETER_NAMES, TrainConfig
from train.errors import ConfigError
from train.export.config import FORMATS

SAMPLES = (0, 1, 7, 8, 12, 512, -1, 1.5, 2.0, 1e-4, -0.5, True, False, None, "", " ", "0", "1", "-3", "8", "500",
           "1.5", "2.0", "1e3", "1e-4", "abc", "nan", "inf", "\"400\"", "\"fast\"", "true", "False", "yes", "off",
           "none", "null", [1], {"a": 1}, "lora", "lora,kohya", "lora,bogus", "", "mme", "fp16", "bf16", "no", "fp8",
           "adamw", "prodigy", "cosine", "linear", "fp32",
           # quality_gate, eval_* (JSON objects and lists of strings)
           {"dino": 0.5}, {"copying": 2}, {"drift": True}, {"dino": "0.5"}, '{"clip_t": 0.3, "drift": 0.2}',
           '{"identity": -1}', "{bad json", "[1, 2]", '["on a beach", "in snow"]', ["a", "b"], "keep", "retry",
           "\"{\\\"dino\\\": 0.6}\"",
           # crop, screen, screen_checks
           "center", "face", "bucket", "warn", "drop", "fail", "blur,faces", "small, duplicate", "blur,bogus", 64, 65.5)


def train_accepts(name, value) -> bool:
    try:
        TrainConfig.from_dict({name: value}, source="sample")
    except ConfigError:
        return False
    return True


def test_the_copy_covers_exactly_trains_names_types_and_choices():
    hints = typing.get_type_hints(TrainConfig)
    assert set(fanout_hp.TRAINING_TYPES) == HYPERPARAMETER_NAMES == fanout_hp.TRAINING_NAMES
    for name, kind in fanout_hp.TRAINING_TYPES.items():
        declared = hints[name]
        optional = type(None) in typing.get_args(declared)
        assert (name in fanout_hp.OPTIONAL_NAMES) == optional, name
        base = next(a for a in typing.get_args(declared) if a is not type(None)) if optional else declared
        assert (typing.get_origin(base) or base) is kind, name   # tuple[str, ...] -> tuple, dict[...] -> dict
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if "choices" in f.metadata}
    assert {k: tuple(v) for k, v in choices.items()} == fanout_hp.CHOICES
    assert fanout_hp.EXPORT_FORMATS == FORMATS
    assert train_config.MIXED_PRECISION == fanout_hp.CHOICES["mixed_precision"]


@pytest.mark.parametrize("name", sorted(HYPERPARAMETER_NAMES))
def test_upload_check_and_trainer_agree_on_every_sample_value(name):
    for value in SAMPLES:
        problem = fanout_hp.value_problem(name, value)
        assert (problem is None) == train_accepts(name, value), (name, value, problem)


def test_a_problem_names_the_task_and_the_field():
    from fanout.tasks import parse_tasks

    [task] = parse_tasks('{"task_id": "t1", "instance_data": "d", "instance_prompt": "p", '
                         '"hyperparameters": {"rank": "0", "seed": 3}}', source="tasks.jsonl")
    assert fanout_hp.task_value_problems([task], "tasks.jsonl") == [
        "tasks.jsonl:1: task 't1' field 'hyperparameters': rank: must be at least 1, got 0"]


def test_fanout_counts_as_images_exactly_the_photo_types_train_reads():
    from fanout.launcher import IMAGE_SUFFIXES, is_image
    from train.photos import IMAGE_SUFFIXES as READ
    from train.screen import CHECKS

    assert IMAGE_SUFFIXES == READ and fanout_hp.SCREEN_CHECKS == CHECKS
    assert is_image("u/r/images/IMG_0001.HEIC") and not is_image("u/r/images/IMG_0001.txt")
    assert not is_image("u/r/images/._IMG_0001.jpg"), "macOS resource forks are not photos"
