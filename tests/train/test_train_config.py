"""TrainConfig and `python -m train` flags: SageMaker strings, unknown keys, bad values, and
every CLI error arriving before the model loads."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from train import cli
from train.config import HYPERPARAMETER_NAMES, TrainConfig, changed_settings, flag_name
from train.errors import ConfigError


@given(st.integers(min_value=1, max_value=10**6))
def test_sagemaker_bare_and_json_quoted_strings_give_the_same_typed_value(n):
    bare = TrainConfig.from_dict({"max_train_steps": str(n), "learning_rate": "3e-4", "train_text_encoder": "true"})
    quoted = TrainConfig.from_dict({"max_train_steps": json.dumps(str(n)), "learning_rate": '"3e-4"',
                                    "train_text_encoder": '"True"'})
    assert bare == quoted
    assert bare.max_train_steps == n and bare.learning_rate == 3e-4 and bare.train_text_encoder is True


def test_string_fields_keep_numeric_looking_text_and_optional_fields_accept_null():
    cfg = TrainConfig.from_dict({"instance_prompt": "123", "class_prompt": '"007"', "snr_gamma": '"null"',
                                 "validation_prompts": '["a dog", "42"]'})
    assert cfg.instance_prompt == "123" and cfg.class_prompt == "007"
    assert cfg.snr_gamma is None and cfg.validation_prompts == ("a dog", "42")


def test_unknown_key_lists_the_valid_ones_and_names_the_source():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"max_steps": "10"}, source="hyperparameters.json")
    assert "hyperparameters.json" in str(e.value) and "'max_steps'" in str(e.value)
    assert "max_train_steps" in str(e.value) and "learning_rate" in str(e.value)


@pytest.mark.parametrize("key,value,expected", [
    ("mixed_precision", "fp8", "--mixed-precision.*no, fp16, bf16"),
    ("optimizer", "sgd", "--optimizer.*adamw, adamw8bit, prodigy"),
    ("lr_scheduler", "step", "--lr-scheduler.*constant"),
    ("rank", "four", "--rank.*not a valid integer"),
    ("rank", "2.5", "--rank.*whole number"),
    ("resolution", "500", "--resolution.*multiple of 8"),
    ("max_train_steps", "0", "--max-train-steps.*at least 1"),
    ("train_text_encoder", "maybe", "--train-text-encoder.*true/false"),
    ("export", "lora,tensorrt", "--export.*tensorrt.*valid: lora, kohya"),
    ("save_dtype", "int4", "--save-dtype.*fp32, fp16, bf16"),
])
def test_bad_values_name_the_setting_and_the_valid_values(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        TrainConfig.from_dict({key: value})


def test_replace_validates_and_hyperparameters_exclude_paths_and_prompts():
    cfg = TrainConfig().replace(rank=8)
    assert cfg.rank == 8 and cfg.alpha == 8.0
    with pytest.raises(ConfigError, match="--rank"):
        cfg.replace(rank=0)
    assert {"max_train_steps", "learning_rate", "rank", "resolution", "preview_every", "checkpoint_every",
            "mixed_precision", "seed"} <= HYPERPARAMETER_NAMES
    assert not {"pretrained_model", "instance_data", "instance_prompt", "output_dir"} & HYPERPARAMETER_NAMES


def test_the_task_pages_settings_are_only_those_that_differ_from_their_defaults():
    # quality_gate's default is an empty dict (a default_factory): left as it is, it is not "changed"
    assert changed_settings(TrainConfig(instance_prompt="a photo of sks dog")) == {"instance_prompt": "a photo of sks dog"}
    cfg = TrainConfig.from_dict({"quality_gate": '{"dino": 0.5}', "max_train_steps": "7"})
    assert changed_settings(cfg) == {"quality_gate": {"dino": 0.5}, "max_train_steps": 7}


def test_export_formats_are_those_train_export_knows():
    from train.export.config import FORMATS

    assert TrainConfig(export=",".join(FORMATS)).export_formats == FORMATS


def test_every_field_has_a_flag_with_help():
    text = cli.build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and flag_name(f.name) in text


# --- the CLI: errors before any model loads -----------------------------------------------

@pytest.fixture
def no_model_load(monkeypatch):
    import train.pipeline

    def refuse(*a, **kw):
        raise AssertionError("the model must not load when the settings are bad")
    monkeypatch.setattr(train.pipeline, "load_base", refuse)


def args(tiny_model, data, out, *extra):
    return ["--pretrained-model", str(tiny_model), "--instance-data", str(data), "--instance-prompt", "a sks toy",
            "--output-dir", str(out), *extra]


@pytest.mark.parametrize("extra,expected", [
    (["--mixed-precision", "fp8"], "--mixed-precision.*no, fp16, bf16"),
    (["--optimizer", "lion"], "--optimizer.*adamw, adamw8bit, prodigy"),
    (["--resolution", "abc"], "--resolution.*not a valid integer"),
])
def test_cli_bad_flag_value_exits_2_before_loading(no_model_load, tiny_model, demo_data, tmp_path, capsys, extra,
                                                   expected):
    assert cli.main(args(tiny_model, demo_data / "instance", tmp_path, *extra)) == 2
    assert re.search(expected, capsys.readouterr().err)


def test_cli_unknown_config_key_and_missing_settings(no_model_load, tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"max_train_step": 10}))
    assert cli.main(["--config", str(tmp_path / "cfg.json")]) == 2
    err = capsys.readouterr().err
    assert "cfg.json" in err and "'max_train_step'" in err and "valid keys" in err
    assert cli.main([]) == 2
    assert "--pretrained-model, --instance-data, --instance-prompt, --output-dir" in capsys.readouterr().err


def test_cli_empty_folder_and_missing_model_fail_fast(no_model_load, tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(args(tiny_model, tmp_path / "empty", tmp_path / "out")) == 2
    assert "--instance-data" in capsys.readouterr().err
    assert cli.main(args(tmp_path / "nothing", tmp_path / "empty", tmp_path / "out")) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_cli_flags_override_the_config_file(tiny_model, demo_data, tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"max_train_steps": "\"50\"", "rank": 16, "seed": "3"}))
    cfg, _ = cli.config_from_args(args(tiny_model, demo_data / "instance", tmp_path, "--config",
                                       str(tmp_path / "cfg.json"), "--rank", "8", "--validation-prompt", "x",
                                       "--validation-prompt", "y", "--no-center-crop"))
    assert (cfg.max_train_steps, cfg.rank, cfg.seed) == (50, 8, 3)
    assert cfg.validation_prompts == ("x", "y") and cfg.center_crop is False


def test_cli_help_and_config_errors_stay_light():
    code = ("import sys; from train import cli; rc = cli.main(['--mixed-precision', 'fp8']); "
            "print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
