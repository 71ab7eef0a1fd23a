"""Per-task configs: hyperparameter encodings, precedence, and paths that must stay in their channel."""

from __future__ import annotations

import os

import pytest

from container.errors import TaskPathError
from container.taskconfig import resolve_in, task_train_config
from fanout.tasks import parse_tasks
from opt_ml import raw_encode, sdk_encode
from train.config import TrainConfig
from train.errors import ConfigError

JOB = {"max_train_steps": 250, "learning_rate": 5e-5, "rank": 8, "resolution": 256, "train_text_encoder": True,
       "lr_scheduler": "cosine", "snr_gamma": 5.0, "export": "lora,kohya", "seed": 123}


def _task(**fields):
    line = {"task_id": "t1", "instance_data": "alice", "instance_prompt": "a photo of sks dog", **fields}
    import json

    return parse_tasks(json.dumps(line))[0]


def _cfg(tmp_path, task, job_hp, **kw):
    (tmp_path / "images" / "alice").mkdir(parents=True, exist_ok=True)
    return task_train_config(task, job_hp=job_hp, model_channel=tmp_path / "model", images_channel=tmp_path / "images",
                             class_channel=kw.pop("class_channel", None), output_dir=tmp_path / "out", **kw)


def test_sdk_and_raw_hyperparameter_encodings_give_the_same_typed_config(tmp_path):
    sdk = _cfg(tmp_path, _task(), sdk_encode({k: str(v) for k, v in JOB.items()}))
    raw = _cfg(tmp_path, _task(), raw_encode({k: str(v) for k, v in JOB.items()}))
    typed = _cfg(tmp_path, _task(), JOB)
    assert sdk == raw == typed
    assert (sdk.max_train_steps, sdk.learning_rate, sdk.train_text_encoder, sdk.seed) == (250, 5e-5, True, 123)


def test_a_prompt_that_looks_like_a_number_stays_a_string(tmp_path):
    cfg = _cfg(tmp_path, _task(instance_prompt="123", validation_prompts=["123", "true"]), {})
    assert cfg.instance_prompt == "123"
    assert cfg.validation_prompts == ("123", "true")


def test_task_overrides_beat_the_job_and_channels_fix_the_paths(tmp_path):
    cfg = _cfg(tmp_path, _task(hyperparameters={"max_train_steps": 30}), sdk_encode({"max_train_steps": 400, "rank": 8}))
    assert (cfg.max_train_steps, cfg.rank) == (30, 8)
    assert cfg.instance_data == str((tmp_path / "images" / "alice").resolve())
    assert cfg.pretrained_model == str(tmp_path / "model")
    assert cfg.resume is True  # a restarted job continues an interrupted task


def test_a_per_task_hyperparameter_that_is_unknown_names_the_task_and_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, _task(hyperparameters={"max_steps": 30}), {})
    assert "task 't1'" in str(err.value) and "max_steps" in str(err.value) and "max_train_steps" in str(err.value)


def test_a_task_cannot_set_its_paths_or_job_settings_through_hyperparameters(tmp_path):
    with pytest.raises(ConfigError, match="instance_data"):
        _cfg(tmp_path, _task(hyperparameters={"instance_data": "/etc"}), {})
    with pytest.raises(ConfigError, match="job-wide"):
        _cfg(tmp_path, _task(hyperparameters={"on_task_failure": "fail"}), {})


def test_a_bad_per_task_value_is_a_config_error_naming_the_task(tmp_path):
    with pytest.raises(ConfigError, match="t1.*resolution"):
        _cfg(tmp_path, _task(hyperparameters={"resolution": 100}), {})


@pytest.mark.parametrize("path", ["../outside", "alice/../../outside", "/etc", "~/x", ""])
def test_paths_that_leave_their_channel_are_refused(tmp_path, path):
    (tmp_path / "images" / "alice").mkdir(parents=True)
    with pytest.raises(TaskPathError):
        resolve_in(tmp_path / "images", path, what="instance_data")


def test_a_symlink_inside_the_channel_that_points_outside_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", tmp_path / "images" / "sneaky")
    with pytest.raises(TaskPathError, match="outside"):
        resolve_in(tmp_path / "images", "sneaky", what="instance_data")


def test_class_data_needs_a_class_channel(tmp_path):
    with pytest.raises(TaskPathError, match="class"):
        _cfg(tmp_path, _task(class_prompt="a dog", class_data="dogs"), {})
    (tmp_path / "class" / "dogs").mkdir(parents=True)
    cfg = _cfg(tmp_path, _task(class_prompt="a dog", class_data="dogs"), {}, class_channel=tmp_path / "class")
    assert cfg.class_data == str((tmp_path / "class" / "dogs").resolve()) and cfg.prior_preservation


def test_the_planner_defaults_agree_with_train_config():
    """fanout cannot import train, so the planner keeps a copy of the defaults it costs tasks by."""
    from dataclasses import fields

    from fanout.plan import PlanConfig

    train_defaults = TrainConfig()
    mirrored = [f.name for f in fields(PlanConfig) if hasattr(train_defaults, f.name)]
    assert set(mirrored) >= {"max_train_steps", "resolution", "train_batch_size", "preview_every",
                             "num_preview_images", "train_text_encoder"}
    for name in mirrored:
        assert getattr(PlanConfig(), name) == getattr(train_defaults, name), name


def test_fanout_checks_hyperparameter_names_against_the_real_ones():
    """fanout rejects typos at validate/submit time from its own copy of the names."""
    from container.settings import CONTAINER_HYPERPARAMETER_NAMES
    from fanout.hyperparameters import CONTAINER_NAMES, TRAINING_NAMES
    from train.config import HYPERPARAMETER_NAMES

    assert TRAINING_NAMES == HYPERPARAMETER_NAMES
    assert CONTAINER_NAMES == CONTAINER_HYPERPARAMETER_NAMES
