"""FLUX.2 klein Base and the step-distilled klein, each on its own recipe (tiny real pipelines).

Base: a task that sets only what a CPU test must (steps, size, learning rate) trains on the
recipe, its LoRA reloads in a fresh pipeline and renders what training rendered, and its
previews sample with classifier-free guidance. Distilled: it trains too, previews in a few
steps without guidance, and the task says which checkpoint to train LoRAs on, and why.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import flow_pipeline, flow_render

torch = pytest.importorskip("torch")

PROMPT = "a photo of sks toy"
# What a CPU test must set (2-core budget); everything else is the variant's recipe.
SET = dict(max_train_steps=6, resolution=32, learning_rate=1e-2, checkpoint_every=0, log_every=1,
           num_preview_images=1)


def resolved(folder, demo_data, **extra):
    from train.config import TrainConfig
    from train.recipes import resolve_for_model

    return resolve_for_model(TrainConfig(pretrained_model=str(folder), instance_data=str(demo_data / "instance"),
                                         instance_prompt=PROMPT, **SET, **extra))


def train_counting_preview_calls(folder, cfg, out, monkeypatch):
    """run_task on a fresh base; returns (result, transformer passes per preview step)."""
    from train import task
    from train.pipeline import load_base

    base = load_base(folder, mixed_precision=cfg.mixed_precision, base_quantization=cfg.base_quantization)
    calls, previewing = [], []
    base.transformer.register_forward_hook(lambda *_: calls.append(1) if previewing else None)

    def counted(*args, **kwargs):  # only the task's previews, not training or the export's renders
        previewing.append(1)
        try:
            return write_previews(*args, **kwargs)
        finally:
            previewing.clear()

    write_previews = task.write_previews
    monkeypatch.setattr(task, "write_previews", counted)
    result = task.run_task(base, cfg, model_dir=out / "model", checkpoint_dir=out / "ck", task_id="k")
    return result, len(calls) / cfg.preview_inference_steps


def test_klein_base_trains_on_its_recipe_reloads_and_previews_with_cfg(tiny_flow_models, demo_data, tmp_path,
                                                                      capsys, monkeypatch):
    folder = tiny_flow_models["flux2-klein"]
    cfg = resolved(folder, demo_data, export="lora,kohya", export_check=True)
    assert cfg.recipe.name == "flux2-klein/base" and cfg.recipe.warning is None
    result, passes_per_step = train_counting_preview_calls(folder, cfg, tmp_path, monkeypatch)
    assert result.state == "completed" and result.step == 6
    # The end-of-training preview: the recipe's 50 steps, each a conditional and an unconditional pass.
    assert (cfg.preview_inference_steps, cfg.preview_guidance_scale, passes_per_step) == (50, 4.0, 2.0)
    assert "recipe flux2-klein/base: " in capsys.readouterr().out
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    recipe = manifest["hyperparameters"]["recipe"]
    assert recipe["variant"] == "base" and recipe["from_recipe"]["rank"] == 32
    assert {"rank", "optimizer", "gradient_checkpointing", "weighting_scheme"} <= set(recipe["sources"])
    assert {"max_train_steps", "resolution", "learning_rate"} <= set(recipe["set_by_task_or_job"])
    assert manifest["hyperparameters"]["config"]["optimizer"] == "adamw8bit"
    for name in ("lora", "kohya"):  # each file read back here and rendered what training did
        entry = manifest["formats"][name]
        assert entry["drift"]["mean_abs_diff"] <= 0.05 and entry["verified"], entry
    fresh = flow_pipeline(folder, "flux2-klein")
    assert not fresh.config.is_distilled  # a user's load samples Base with CFG, as training previewed it
    base_image = flow_render(fresh)
    fresh.load_lora_weights(tmp_path / "model")
    assert np.abs(flow_render(fresh) - base_image).max() > 1e-3, "the trained LoRA must change the image"


def test_the_distilled_klein_trains_previews_without_cfg_and_says_to_use_base(tiny_klein_distilled, demo_data,
                                                                             tmp_path, capsys, monkeypatch):
    cfg = resolved(tiny_klein_distilled, demo_data, export="lora", export_check=False)
    result, passes_per_step = train_counting_preview_calls(tiny_klein_distilled, cfg, tmp_path, monkeypatch)
    assert result.state == "completed"
    assert (cfg.preview_inference_steps, cfg.preview_guidance_scale, passes_per_step) == (4, 1.0, 1.0)
    err = capsys.readouterr().err
    assert "WARNING" in err and "black-forest-labs/FLUX.2-klein-base-4B" in err and "few-step" in err
    recipe = json.loads((tmp_path / "model" / "manifest.json").read_text())["hyperparameters"]["recipe"]
    assert recipe["variant"] == "distilled" and "FLUX.2-klein-base-4B" in recipe["warning"]
