"""SDXL DreamBooth LoRA end to end on the tiny SDXL pipeline: what a user gets out of run_task.

One module-scoped sequence of tasks on ONE loaded SDXL base, as the warm worker runs them:
A (UNet + both text encoders, alpha != rank, kohya copy), C (another subject, UNet only),
A again (must equal the first A). The renders of the in-memory model are taken just before
export, then compared with what a fresh StableDiffusionXLPipeline loads from the files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import FAST
from train_helpers import lora_tensors, max_abs_diff

torch = pytest.importorskip("torch")
PROMPT = "a photo of sks toy"


def render_xl(pipe, prompt: str = PROMPT, seed: int = 7, size: int = 32):
    """A float image from an SDXL pipeline's modules with a fixed seed and a fast scheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline

    parts = {k: getattr(pipe, k) for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")}
    view = StableDiffusionXLPipeline(**parts, scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config),
                                     add_watermarker=False)
    view.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = view(prompt, num_inference_steps=3, guidance_scale=3.0, height=size, width=size,
                   generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


def fresh_xl(model_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def xl_base(tiny_sdxl_model):
    from train.pipeline import load_base

    return load_base(tiny_sdxl_model)


@pytest.fixture(scope="module")
def runs(xl_base, demo_data, tmp_path_factory):
    import train.task
    from train.config import TrainConfig
    from train.task import run_task

    root = tmp_path_factory.mktemp("sdxl-runs")
    seen: dict = {"renders": {}}
    real_export = train.task.export

    def spy_export(b, cfg, model_dir, **kw):   # the in-memory trained model, just before export
        seen["renders"][model_dir.parent.name] = render_xl(b.pipeline())
        return real_export(b, cfg, model_dir, **kw)

    seen["base_render"] = render_xl(xl_base.pipeline())
    seen["base_weights"] = {f"{n}.{k}": v.clone() for n, m in xl_base.torch_modules().items()
                            for k, v in m.state_dict().items()}
    a = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, train_text_encoder=True,
                    rank=4, lora_alpha=8, **FAST, export="lora,kohya")
    c = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt="a photo of zwx toy", **FAST,
                    export="lora")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.task, "export", spy_export)
        for name, cfg in (("a", a), ("c", c), ("a-again", a)):
            seen[name] = run_task(xl_base, cfg, model_dir=root / name / "model", checkpoint_dir=root / name / "ck",
                                  task_id=f"xl-{name}")
    seen["root"] = root
    return seen


def test_round_trip_fresh_sdxl_pipeline_generates_what_the_trained_model_did(runs, tiny_sdxl_model):
    pipe = fresh_xl(tiny_sdxl_model)
    pipe.load_lora_weights(runs["root"] / "a" / "model")
    reloaded = render_xl(pipe)
    trained = runs["renders"]["a"]
    assert np.abs(reloaded - trained).max() < 1e-4, "reloaded LoRA (alpha 8, rank 4) must render like the trained one"
    assert np.abs(trained - runs["base_render"]).mean() > 1e-3, "the LoRA must change the image"
    manifest = json.loads((runs["root"] / "a" / "model" / "manifest.json").read_text())
    assert manifest["family"] == "sdxl"
    # Previews came from the SDXL pipeline over the in-memory modules, mid-run and at the end.
    for step in ("step-000003", "step-000006"):
        assert {p.name for p in (runs["root"] / "a" / "ck" / "previews" / step).iterdir()} == {
            "0.png", "grid.png", "prompts.json"}
    assert manifest["formats"]["lora"]["load"].startswith("StableDiffusionXLPipeline.from_pretrained(BASE)")


def test_both_text_encoders_lora_are_saved_and_reloaded(runs, tiny_sdxl_model):
    saved = lora_tensors(runs["root"] / "a" / "model")
    prefixes = {k.split(".")[0] for k in saved}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}, prefixes
    base_pipe, pipe = fresh_xl(tiny_sdxl_model), fresh_xl(tiny_sdxl_model)
    pipe.load_lora_weights(runs["root"] / "a" / "model")
    with torch.no_grad():
        for encoder, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            ids = getattr(pipe, tok)([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
            before = getattr(base_pipe, encoder)(ids, output_hidden_states=True).hidden_states[-2]
            after = getattr(pipe, encoder)(ids, output_hidden_states=True).hidden_states[-2]
            assert (before - after).abs().max() > 1e-4, f"the reloaded {encoder} LoRA must change the embeddings"


def test_kohya_copy_read_through_diffusers_kohya_converter_renders_the_same(runs, tiny_sdxl_model):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    model = runs["root"] / "a" / "model"
    kohya = load_file(model / "lora_kohya.safetensors")
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}
    alphas = {float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas == {8.0}, "kohya scale = alpha / rank needs the task's alpha, not the rank"
    # diffusers detects the kohya layout and converts it (lora_te1 -> text_encoder, lora_te2 -> text_encoder_2).
    converted, _ = StableDiffusionXLPipeline.lora_state_dict(model, weight_name="lora_kohya.safetensors")
    assert {k.split(".")[0] for k in converted} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = fresh_xl(tiny_sdxl_model)
    pipe.load_lora_weights(model, weight_name="lora_kohya.safetensors")
    assert np.abs(render_xl(pipe) - runs["renders"]["a"]).max() < 1e-4


def test_a_task_does_not_depend_on_what_ran_before_on_the_sdxl_base(runs, xl_base):
    assert max_abs_diff(lora_tensors(runs["root"] / "a" / "model"),
                        lora_tensors(runs["root"] / "a-again" / "model")) == 0.0
    for name, module in xl_base.torch_modules().items():
        assert not getattr(module, "peft_config", None), f"{name} still carries an adapter"
    after = {f"{n}.{k}": v for n, m in xl_base.torch_modules().items() for k, v in m.state_dict().items()}
    assert after.keys() == runs["base_weights"].keys()
    assert all(torch.equal(after[k], v) for k, v in runs["base_weights"].items()), "base weights must be untouched"


def test_add_time_ids_carry_each_images_original_size_and_crop(xl_base, tmp_path):
    from PIL import Image

    from train.config import TrainConfig
    from train.data import generator, load_images
    from train.encode import Encoder

    Image.new("RGB", (96, 48), "red").save(tmp_path / "wide.png")
    examples = load_images(tmp_path, prompt=PROMPT, resolution=32, max_pixels=10**6)
    cfg = TrainConfig(instance_data=str(tmp_path), instance_prompt=PROMPT, resolution=32, center_crop=False)
    latents, infos = Encoder(xl_base, cfg, examples).latents(examples, generator(0, "t", 0))
    assert infos[0].original_size == (48, 96) and infos[0].target_size == (32, 32)
    assert infos[0].crop_top_left[0] == 0 and 0 <= infos[0].crop_top_left[1] <= 32
    # The UNet is conditioned on them: another original size gives another prediction.
    from train.families import ImageInfo

    family = xl_base.family
    noised = family.noise(xl_base, cfg, latents, generator(0, "n", 0))
    with torch.no_grad():
        prompts = family.encode_prompts(xl_base, [PROMPT])
        one = family.denoise(xl_base, noised, prompts, infos)
        other = family.denoise(xl_base, noised, prompts, [ImageInfo((1024, 1024), (0, 0), (32, 32))])
    assert (one - other).abs().max() > 1e-6


def test_v_prediction_prior_preservation_and_the_sd_settings_train_sdxl(make_tiny_model, demo_data, tmp_path):
    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.task import run_task

    model = make_tiny_model.build_pipeline(tmp_path / "xl-v", family="sdxl", prediction_type="v_prediction")
    vbase = load_base(model)
    assert vbase.family.name == "sdxl" and vbase.prediction_type == "v_prediction"
    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, snr_gamma=5.0,
                      noise_offset=0.05, class_prompt="a photo of a toy", num_class_images=2,
                      gradient_checkpointing=True, optimizer="adamw8bit",
                      **{**FAST, "max_train_steps": 3, "preview_every": 0, "checkpoint_every": 0}, export="lora")
    result = run_task(vbase, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck",
                      class_cache_dir=tmp_path / "cache")
    assert result.state == "completed" and np.isfinite(result.loss)
    [cache] = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]   # (beside it: the slots' lock file)
    assert len(list(cache.glob("*.png"))) == 2, "class images generated by SDXL"
    pipe = fresh_xl(model)
    pipe.load_lora_weights(tmp_path / "model")
    assert np.isfinite(render_xl(pipe)).all()
    assert not vbase.unet.is_gradient_checkpointing, "detach must turn gradient checkpointing off again"


def test_merged_formats_of_an_sdxl_lora_load_and_draw_what_the_lora_draws(tiny_sdxl_model, tmp_path):
    from peft import LoraConfig

    from train.export import ExportConfig, export_model

    pipe = fresh_xl(tiny_sdxl_model)
    torch.manual_seed(1)
    for name, targets in (("unet", ["to_q", "to_k", "to_v", "to_out.0"]),
                          ("text_encoder_2", ["q_proj", "k_proj", "v_proj", "out_proj"])):
        getattr(pipe, name).add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                                   target_modules=targets))
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    manifest = export_model(pipe, ExportConfig(formats=("lora", "merged-fp16", "merged-int8"), drift_steps=2,
                                               drift_resolution=32), tmp_path, base_model_dir=tiny_sdxl_model,
                            train_text_encoder=True, rank=4, lora_alpha=8, validation_prompts=[PROMPT])
    formats = manifest["formats"]
    assert manifest["family"] == "sdxl"
    assert formats["lora"]["drift"]["mean_abs_diff"] < 0.5
    assert formats["merged-fp16"]["drift"]["mean_abs_diff"] < 2.0, formats["merged-fp16"]["drift"]
    assert formats["merged-int8"]["status"] == "ok" and formats["merged-int8"]["drift"]["images"] == 1
    assert formats["merged-fp16"]["load"] == "StableDiffusionXLPipeline.from_pretrained('merged-fp16')"
    merged = json.loads((tmp_path / "merged-fp16" / "model_index.json").read_text())
    assert merged["_class_name"] == "StableDiffusionXLPipeline"
    assert (tmp_path / "merged-fp16" / "text_encoder_2" / "model.safetensors").is_file()


def test_re_export_cli_reads_an_sdxl_lora_back_with_the_sdxl_pipeline(runs, tiny_sdxl_model, tmp_path):
    from train.export.__main__ import main as export_main

    out = tmp_path / "again"
    assert export_main(["--lora", str(runs["root"] / "a" / "model"), "--base", str(tiny_sdxl_model), "--formats",
                        "lora,kohya", "--out", str(out), "--drift-steps", "2", "--drift-resolution", "32"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "sdxl" and manifest["lora"]["train_text_encoder"] is True
    assert manifest["formats"]["kohya"]["drift"]["mean_abs_diff"] < 0.5
    assert max_abs_diff(lora_tensors(runs["root"] / "a" / "model"), lora_tensors(out)) < 1e-6


def test_buckets_train_sdxl_at_each_photos_size_and_the_time_ids_carry_the_real_sizes(xl_base, tmp_path):
    """crop=bucket with prior preservation and drawn offsets: a wide and a tall photo each go
    through the UNet at their bucket (the square class images in their own pass), and every
    add_time_ids row is that image's original (h, w), crop (top, left) and bucket (h, w)."""
    from PIL import Image

    from train.config import TrainConfig
    from train.crops import bucket_sizes, nearest_bucket
    from train.task import run_task

    data = tmp_path / "photos"
    data.mkdir()
    originals = {"wide.png": (45, 96), "tall.png": (80, 48)}             # (height, width)
    rng = np.random.default_rng(0)
    for name, (h, w) in originals.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(data / name)
    cfg = TrainConfig(instance_data=str(data), instance_prompt=PROMPT, crop="bucket", center_crop=False,
                      class_prompt="a photo of a toy", num_class_images=2,
                      **{**FAST, "max_train_steps": 4, "preview_every": 0, "checkpoint_every": 0}, export="lora")
    calls = []

    def record(module, args, kwargs):
        if torch.is_grad_enabled():
            calls.append((tuple(args[0].shape[2:]), kwargs["added_cond_kwargs"]["time_ids"].tolist()))

    hook = xl_base.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        assert run_task(xl_base, cfg, model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck").state == "completed"
    finally:
        hook.remove()
    buckets = bucket_sizes(32, xl_base.family.size_multiple(xl_base))
    expected = {name: nearest_bucket(w, h, buckets) for name, (h, w) in originals.items()}
    assert expected["wide.png"][1] > expected["wide.png"][0] and expected["tall.png"][0] > expected["tall.png"][1]
    instance = [(shape, row) for shape, rows in calls for row in rows if (row[4], row[5]) != (32, 32)]
    assert len(calls) == 8 and len(instance) == 4, "each step: the photo's pass, then the class images' pass"
    for shape, (oh, ow, top, left, th, tw) in instance:
        name = next(n for n, size in originals.items() if size == (oh, ow))
        assert (th, tw) == expected[name] and shape == (th // 2, tw // 2)
        scale = max(tw / ow, th / oh)
        assert 0 <= top <= round(oh * scale) - th and 0 <= left <= round(ow * scale) - tw
    classes = [row for shape, rows in calls for row in rows if (row[4], row[5]) == (32, 32)]
    assert classes and all(row == [32, 32, 0, 0, 32, 32] for row in classes)
