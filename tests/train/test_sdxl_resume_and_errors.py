"""SDXL: a run killed with SIGKILL and resumed ends with the same LoRA as an uninterrupted one;
settings and formats a family cannot use, and bases no family handles, fail before any load."""

from __future__ import annotations

import json
import shutil

import pytest
from test_train_resume import STEPS, cli_args
from train_helpers import kill_then_resume, lora_tensors, max_abs_diff, run_cli


@pytest.mark.slow
def test_sdxl_sigkill_then_resume_ends_with_the_same_lora(tiny_sdxl_model, demo_data, tmp_path):
    # The SD resume settings (both text encoders, random crop + flip, min-SNR, noise offset,
    # accumulation, 8-bit AdamW, cosine warmup, gradient checkpointing), on SDXL.
    straight = tmp_path / "straight"
    done = run_cli(*cli_args(tiny_sdxl_model, demo_data, straight))
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    kill_then_resume(cli_args(tiny_sdxl_model, demo_data, killed), killed, step=4)
    a, b = lora_tensors(straight / "model"), lora_tensors(killed / "model")
    assert {k.split(".")[0] for k in a} == {"unet", "text_encoder", "text_encoder_2"}
    assert max_abs_diff(a, b) <= 1e-5
    status = json.loads((killed / "checkpoints" / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == STEPS and status["attempts"] == 2


def _cli(model, demo_data, out, *extra):
    return run_cli("--pretrained-model", str(model), "--instance-data", str(demo_data / "instance"),
                   "--instance-prompt", "a photo of sks toy", "--output-dir", str(out), *extra, timeout=120)


def test_a_format_the_family_cannot_produce_fails_before_the_model_loads(tiny_sdxl_model, demo_data, tmp_path):
    done = _cli(tiny_sdxl_model, demo_data, tmp_path / "out", "--export", "lora,mme")
    assert done.returncode == 2
    assert "'mme'" in done.stderr and "sdxl" in done.stderr and "available: lora, kohya" in done.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written (or loaded) for a refused setting"


def test_a_pipeline_class_no_family_handles_is_an_error_listing_the_supported_ones(tiny_model, demo_data, tmp_path):
    from train.errors import ConfigError
    from train.pipeline import load_base

    other = tmp_path / "kandinsky"
    shutil.copytree(tiny_model, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    done = _cli(other, demo_data, tmp_path / "out")
    assert done.returncode == 2
    assert "'KandinskyPipeline' is not supported" in done.stderr
    assert "StableDiffusionPipeline" in done.stderr and "StableDiffusionXLPipeline" in done.stderr
    with pytest.raises(ConfigError, match="KandinskyPipeline"):
        load_base(other)


def test_an_sdxl_folder_missing_a_component_is_named(tiny_sdxl_model, tmp_path):
    from train.errors import ConfigError
    from train.families import family_of

    broken = tmp_path / "xl"
    shutil.copytree(tiny_sdxl_model, broken)
    index = json.loads((broken / "model_index.json").read_text())
    del index["text_encoder_2"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="not a Stable Diffusion XL pipeline .missing text_encoder_2"):
        family_of(broken)


def test_lora_target_modules_the_denoiser_lacks_is_an_error_naming_the_setting(base, demo_data, tmp_path):
    from train.config import TrainConfig
    from train.errors import ConfigError
    from train.task import run_task

    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt="a photo of sks toy",
                      lora_target_modules="to_q,no_such_proj", resolution=32, max_train_steps=1, export="lora")
    with pytest.raises(ConfigError, match="lora_target_modules.*no_such_proj"):
        run_task(base, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert not getattr(base.unet, "peft_config", None), "a refused adapter leaves the base clean"


def test_lora_target_modules_picks_the_trained_layers(base, demo_data, tmp_path):
    from train.config import TrainConfig
    from train.task import run_task

    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt="a photo of sks toy",
                      lora_target_modules="to_k,to_v", resolution=32, max_train_steps=1, preview_every=0,
                      preview_inference_steps=1, num_preview_images=1, export="lora", export_check=False)
    run_task(base, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    names = {k.rsplit(".lora", 1)[0].rsplit(".", 1)[-1] for k in lora_tensors(tmp_path / "model")}
    assert names == {"to_k", "to_v"}, names


def test_a_setting_only_some_families_understand_is_refused_naming_setting_and_family():
    """snr_gamma / noise_offset are DDPM settings (families=("sd", "sdxl") in TrainConfig): a
    family outside that list (a flow-matching one, issue 10) refuses them before any load."""
    from train.config import TrainConfig, family_settings_problems
    from train.families import Family, family_named

    class FlowFamily(Family):   # only its name and title matter to the settings check
        name, title = "flow", "a flow-matching family"

    cfg = TrainConfig(snr_gamma=5.0, noise_offset=0.05)
    family_named("sd").check_config(cfg)
    family_named("sdxl").check_config(cfg)
    problems = family_settings_problems(cfg, FlowFamily())
    assert [p.split(" ")[0] for p in problems] == ["snr_gamma", "noise_offset"]
    assert problems[0].startswith("snr_gamma (--snr-gamma) is a setting of sd, sdxl models")
    assert all("flow (a flow-matching family)" in p for p in problems)
    assert family_settings_problems(TrainConfig(), FlowFamily()) == []  # defaults are fine everywhere
