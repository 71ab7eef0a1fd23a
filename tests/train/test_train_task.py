"""End to end on the tiny pipeline: what a user gets out of run_task.

One module-scoped sequence of tasks on ONE loaded base model, like the container runs them:
A (text encoder too, alpha != rank), B (prior preservation, class images generated), A again
(must equal the first A), B2 (same class: cached class images reused).
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout

import numpy as np
import pytest
from train_helpers import FAST
from train_helpers import fresh_pipeline, lora_tensors, max_abs_diff, render

PROMPT = "a photo of sks toy"


@pytest.fixture(scope="module")
def runs(base, demo_data, tmp_path_factory):
    import train.prior
    import train.task
    from train.config import TrainConfig
    from train.task import run_task

    root = tmp_path_factory.mktemp("runs")
    cache = root / "class-cache"
    seen: dict = {"generated": 0, "renders": {}}
    real_export, real_generate = train.task.export, train.prior.generate

    def spy_export(b, cfg, model_dir, **kw):   # the in-memory trained model, just before export
        seen["renders"][model_dir.parent.name] = render(b.pipeline())
        return real_export(b, cfg, model_dir, **kw)

    def spy_generate(*a, **kw):
        seen["generated"] += 1
        return real_generate(*a, **kw)

    seen["base_render"] = render(base.pipeline())
    seen["base_unet"] = {k: v.clone() for k, v in base.unet.state_dict().items()}
    a = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, train_text_encoder=True,
                    rank=4, lora_alpha=8, **FAST)
    b = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt="a photo of zwx toy",
                    class_prompt="a photo of a toy", num_class_images=2, **FAST, export="lora")
    b2 = b.replace(instance_prompt="a photo of qrt toy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.task, "export", spy_export)
        mp.setattr(train.prior, "generate", spy_generate)
        out = io.StringIO()
        with redirect_stdout(out):
            for name, cfg in (("a", a), ("b", b), ("a-again", a), ("b2", b2)):
                seen[name] = run_task(base, cfg, model_dir=root / name / "model", checkpoint_dir=root / name / "ck",
                                      class_cache_dir=cache, task_id=f"task-{name}")
    seen.update(root=root, cache=cache, log=out.getvalue())
    return seen


def test_round_trip_fresh_pipeline_generates_what_the_trained_model_did(runs, tiny_model):
    pipe = fresh_pipeline(tiny_model)
    pipe.load_lora_weights(runs["root"] / "a" / "model")
    reloaded = render(pipe)
    trained = runs["renders"]["a"]
    assert np.abs(reloaded - trained).max() < 1e-4, "reloaded LoRA (alpha 8, rank 4) must render like the trained one"
    assert np.abs(trained - runs["base_render"]).mean() > 1e-3, "the LoRA must change the image"


def test_text_encoder_lora_is_saved_and_reloaded(runs, tiny_model):
    import torch

    saved = lora_tensors(runs["root"] / "a" / "model")
    assert any(k.startswith("text_encoder.") for k in saved) and any(k.startswith("unet.") for k in saved)
    base_pipe, pipe = fresh_pipeline(tiny_model), fresh_pipeline(tiny_model)
    pipe.load_lora_weights(runs["root"] / "a" / "model")
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        before, after = base_pipe.text_encoder(ids)[0], pipe.text_encoder(ids)[0]
    assert (before - after).abs().max() > 1e-4, "the reloaded text encoder LoRA must change the embeddings"


def test_a_task_does_not_depend_on_what_ran_before_on_the_base(runs, base):
    assert max_abs_diff(lora_tensors(runs["root"] / "a" / "model"),
                        lora_tensors(runs["root"] / "a-again" / "model")) == 0.0
    assert not hasattr(base.unet, "peft_config") and not getattr(base.text_encoder, "_hf_peft_config_loaded", False)
    after = base.unet.state_dict()
    assert after.keys() == runs["base_unet"].keys()
    assert all(torch_equal(after[k], v) for k, v in runs["base_unet"].items()), "base weights must be untouched"


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_prior_preservation_generates_class_images_once_and_reuses_them(runs):
    assert runs["generated"] == 1, "the second task with the same class must reuse the cached class images"
    folders = [p for p in runs["cache"].iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1
    assert len(list(folders[0].glob("*.png"))) == 2
    assert json.loads((folders[0] / "meta.json").read_text())["class_prompt"] == "a photo of a toy"
    # Same class images, different subject prompt: a different LoRA.
    assert max_abs_diff(lora_tensors(runs["root"] / "b" / "model"), lora_tensors(runs["root"] / "b2" / "model")) > 0


def test_outputs_status_previews_and_log_lines(runs):
    ck, model = runs["root"] / "a" / "ck", runs["root"] / "a" / "model"
    status = json.loads((ck / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 6 and status["attempts"] == 1
    assert status["error"] is None and status["started_at"] and status["finished_at"]
    assert isinstance(status["loss"], float)
    for step in ("step-000003", "step-000006"):
        names = {p.name for p in (ck / "previews" / step).iterdir()}
        assert names == {"0.png", "grid.png", "prompts.json"}, names
    prompts = json.loads((ck / "previews" / "step-000006" / "prompts.json").read_text())
    assert prompts["images"][0]["prompt"] == PROMPT
    assert (model / "pytorch_lora_weights.safetensors").is_file() and (model / "manifest.json").is_file()
    assert any(p.name != "pytorch_lora_weights.safetensors" and p.suffix == ".safetensors" for p in model.iterdir())
    line = re.compile(r"^task=task-a step=(\d+)/6 loss=[0-9.eE+-]+ lr=[0-9.eE+-]+ it/s=[0-9.]+$", re.M)
    assert [int(m) for m in line.findall(runs["log"])] == [2, 4, 6]


def test_without_scorer_models_a_task_is_not_evaluated_and_renders_nothing_more(runs):
    ck, model = runs["root"] / "a" / "ck", runs["root"] / "a" / "model"
    quality = json.loads((model / "manifest.json").read_text())["quality"]
    assert quality["verdict"] == "not_evaluated" and "scores" not in quality
    assert json.loads((ck / "status.json").read_text())["quality"] == quality
    assert not (ck / "evaluation").exists()


def test_previews_use_a_fixed_seed_per_prompt(runs):
    from PIL import Image

    # Task A and its rerun trained the same LoRA: the same seed must give the same preview.
    first = np.asarray(Image.open(runs["root"] / "a" / "ck" / "previews" / "step-000006" / "0.png"))
    again = np.asarray(Image.open(runs["root"] / "a-again" / "ck" / "previews" / "step-000006" / "0.png"))
    assert np.array_equal(first, again)


def test_v_prediction_model_trains_and_round_trips(tiny_model_v, demo_data, tmp_path):
    import torch

    from train.config import TrainConfig
    from train.objective import target_for
    from train.pipeline import load_base
    from train.task import run_task

    vbase = load_base(tiny_model_v)
    assert vbase.prediction_type == "v_prediction"
    latents, noise, t = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.tensor([500])
    assert torch.allclose(target_for(vbase, latents, noise, t), vbase.noise_scheduler.get_velocity(latents, noise, t))
    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, snr_gamma=5.0,
                      **{**FAST, "max_train_steps": 4, "preview_every": 0, "checkpoint_every": 0}, export="lora")
    result = run_task(vbase, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert result.state == "completed" and np.isfinite(result.loss)
    pipe = fresh_pipeline(tiny_model_v)
    pipe.load_lora_weights(tmp_path / "model")
    assert np.isfinite(render(pipe)).all()


def test_given_class_images_are_topped_up_with_generated_ones(base, tmp_path):
    from PIL import Image

    from train.config import TrainConfig
    from train.prior import class_examples

    given = tmp_path / "class"
    given.mkdir()
    Image.new("RGB", (40, 40), "blue").save(given / "mine.jpg")
    cfg = TrainConfig(instance_data="unused", instance_prompt=PROMPT, class_prompt="a photo of a cup",
                      class_data=str(given), num_class_images=2, resolution=32, class_inference_steps=1)
    examples = class_examples(base, cfg, tmp_path / "cache", log=lambda *_: None)
    assert [e.path.name for e in examples] == ["mine.jpg", "class-00000.png"]
    assert all(e.caption == "a photo of a cup" for e in examples)
    assert class_examples(base, cfg.replace(num_class_images=1), tmp_path / "cache")[0].path.name == "mine.jpg"


@pytest.mark.slow
def test_bf16_mixed_precision_trains_and_exports_fp32_lora(tiny_model, demo_data, tmp_path):
    # Its own process: accelerate fixes the mixed precision once per process.
    from train_helpers import run_cli

    out = tmp_path / "bf16"
    done = run_cli("--pretrained-model", str(tiny_model), "--instance-data", str(demo_data / "instance"),
                   "--instance-prompt", PROMPT, "--output-dir", str(out), "--mixed-precision", "bf16",
                   "--resolution", "32", "--max-train-steps", "2", "--preview-every", "0",
                   "--preview-inference-steps", "1", "--num-preview-images", "1", "--export", "lora",
                   "--no-export-check", "--save-dtype", "fp32")
    assert done.returncode == 0, done.stderr[-3000:]
    saved = lora_tensors(out / "model")
    assert saved and all(str(t.dtype) == "torch.float32" and t.isfinite().all() for t in saved.values())
    assert json.loads((out / "checkpoints" / "status.json").read_text())["state"] == "completed"


def test_prodigy_optimizer_trains_a_lora(base, demo_data, tmp_path):
    """--optimizer prodigy (learning rate ~1.0, Prodigy adapts it) moves the LoRA off its zero init."""
    import torch

    from train.config import TrainConfig
    from train.task import run_task

    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, optimizer="prodigy",
                      **{**FAST, "learning_rate": 1.0, "max_train_steps": 3}, export="lora")
    result = run_task(base, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck", task_id="prodigy")
    assert result.state == "completed" and result.step == 3
    lora_b = [v for k, v in lora_tensors(tmp_path / "model").items() if ".lora.up." in k]
    assert lora_b and any(torch.count_nonzero(v) > 0 for v in lora_b), "the up-projections must have trained"
