"""Z-Image (Base and Turbo) and Qwen-Image through the one training loop, on tiny real pipelines.

Per family: the diffusers LoRA reloads into a fresh pipeline of the family and renders what the
trained model did (and not what the base does); the ComfyUI copy loads through ComfyUI's key
rules with every key used and patches the weights diffusers' loader patches; an NF4 base trains
a LoRA with the same keys whose objective goes down; prior preservation samples class images
with the family pipeline; settings the family cannot use are refused, and its own settings are
refused elsewhere. Z-Image's variants: Turbo is told apart from Base, trains as the reference
trains it with a warning, and samples without CFG; every family's recipe is a valid config.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from train_helpers import FAST, eval_loss, flow_pipeline, flow_render, shared_base

torch = pytest.importorskip("torch")

FAMILIES = ("z-image", "qwen-image")
PROMPT = "a photo of sks toy"
# Stated, not left to the families' recipes (1024 px, rank 16, 8-bit AdamW, ...: GPU defaults).
EXPLICIT = dict(rank=4, optimizer="adamw", mixed_precision="no", gradient_accumulation_steps=1, lr_warmup_steps=0,
                gradient_checkpointing=False, preview_guidance_scale=7.5)


@pytest.fixture(scope="module")
def models(tiny_z_image, tiny_qwen_image):
    return {"z-image": tiny_z_image, "qwen-image": tiny_qwen_image}


def config(demo_data, **overrides):
    from train.config import TrainConfig

    return TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT,
                       **{**FAST, **EXPLICIT, "preview_every": 0, "checkpoint_every": 0, **overrides})


@pytest.fixture(scope="module")
def trained(models, demo_data, tmp_path_factory):
    """Each family trained once, both exports checked against the in-memory LoRA."""
    from train.task import run_task

    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(f"run-{family}")
        cfg = config(demo_data, export="lora,kohya", export_check=True, lora_alpha=8)
        out[family] = (root / "model", run_task(shared_base(models[family]), cfg, model_dir=root / "model",
                                                checkpoint_dir=root / "ck"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lora_reloads_in_the_family_pipeline_and_renders_what_training_rendered(trained, models, family):
    model_dir, result = trained[family]
    assert result.state == "completed" and result.step == FAST["max_train_steps"]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["family"] == family
    for name in ("lora", "kohya"):  # export_check: each file reloaded with load_lora_weights and rendered
        entry = manifest["formats"][name]
        assert entry["status"] == "ok" and entry["drift"]["mean_abs_diff"] <= 0.05, (name, entry)
        # this very file was read back by diffusers and rendered (per-file), ...
        assert len(entry["verified"]) == 1 and "rendered 1 image(s)" in entry["verified"][0]["how"], entry
    # ... and the suite maps every key of this family's kohya copy through ComfyUI's rules.
    assert any("ComfyUI" in r["reader"] for r in manifest["formats"]["kohya"]["suite_verified"])
    base_image = flow_render(flow_pipeline(models[family], family))
    pipe = flow_pipeline(models[family], family)
    pipe.load_lora_weights(model_dir)
    with_lora = flow_render(pipe)
    assert np.abs(with_lora - base_image).max() > 1e-3, "the trained LoRA must change the image"
    comfy = flow_pipeline(models[family], family)
    comfy.load_lora_weights(model_dir, weight_name="lora_kohya.safetensors")
    np.testing.assert_allclose(flow_render(comfy), with_lora, atol=2e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyui_uses_every_key_of_the_copy_and_patches_what_diffusers_applies(trained, models, family):
    """The ComfyUI copy through ComfyUI's key map and patch rules (comfy_keys.py) gives, weight
    by weight, what diffusers' loader applies from the diffusers file."""
    from comfy_keys import apply, comfy_weights, dit_key_map, dit_patches
    from safetensors.torch import load_file

    from train.families.bfl_keys import lora_layers

    model_dir, _ = trained[family]
    copy = load_file(model_dir / "lora_kohya.safetensors")
    assert copy and all(k.startswith("diffusion_model.") for k in copy)
    pipe = flow_pipeline(models[family], family)
    transformer = pipe.transformer
    base_weights = {k: v.clone() for k, v in transformer.state_dict().items()}
    patches, not_loaded = dit_patches(copy, dit_key_map(family, transformer))
    assert not not_loaded, f"ComfyUI would warn 'lora key not loaded' for {sorted(not_loaded)[:3]}"
    got = apply(comfy_weights(family, transformer, base_weights), patches)

    pipe.load_lora_weights(model_dir, adapter_name="default")
    merged = dict(base_weights)
    for name, (down, up, scale) in lora_layers(transformer).items():
        merged[f"{name}.weight"] = base_weights[f"{name}.weight"] + scale * (up.float() @ down.float())
    want = comfy_weights(family, transformer, merged)
    assert got.keys() and all(k in want for k in got)
    worst = max(float((got[k] - want[k]).abs().max()) for k in got)
    assert worst <= 1e-6, worst
    if family == "z-image":  # q, k and v each patch their third of ComfyUI's fused qkv
        assert any(k.endswith("attention.qkv.weight") for k in got)


@pytest.mark.parametrize("family", FAMILIES)
def test_nf4_base_trains_a_lora_with_the_unquantized_keys_and_its_loss_goes_down(models, demo_data, tmp_path,
                                                                                  family):
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    from train.pipeline import detach_lora
    from train.task import run_task

    base = shared_base(models[family], "nf4")
    attn = base.transformer.layers[0].attention if family == "z-image" else base.transformer.transformer_blocks[0].attn
    assert isinstance(attn.to_q, bnb.nn.Linear4bit) and base.quantization == "nf4"
    # Qwen-Image's 7B text encoder is quantized with it (it then fits a 24 GB GPU beside the
    # transformer); Z-Image's 4B one stays full precision, parked off the accelerator.
    te_quantized = any(isinstance(m, bnb.nn.Linear4bit) for m in base.text_encoder.modules())
    assert te_quantized == (family == "qwen-image")
    cfg = config(demo_data, max_train_steps=12, learning_rate=1e-2, export="lora", base_quantization="nf4")
    before = eval_loss(base, cfg)
    result = run_task(base, cfg, model_dir=tmp_path / "nf4", checkpoint_dir=tmp_path / "ck")
    assert result.state == "completed"
    saved = load_file(tmp_path / "nf4" / "pytorch_lora_weights.safetensors")
    plain = {n for n, _ in flow_pipeline(models[family], family).transformer.named_modules()}
    assert saved and all(k.removeprefix("transformer.").rsplit(".lora_", 1)[0] in plain for k in saved)
    assert all(v.dtype == torch.float32 for v in saved.values()), "only the fp32 LoRA is saved"
    base.transformer.load_lora_adapter(saved, prefix="transformer", adapter_name="default")
    try:
        after = eval_loss(base, cfg)
    finally:
        detach_lora(base)
    assert after < before * 0.995, (before, after)  # deterministic: fixed draws, fixed data


@pytest.mark.parametrize("family", FAMILIES)
def test_prior_preservation_samples_class_images_with_the_family_pipeline(models, demo_data, tmp_path, family):
    from PIL import Image

    from train.task import run_task

    cfg = config(demo_data, class_prompt="a photo of a toy", num_class_images=2, max_train_steps=2, export="lora",
                 class_inference_steps=2)
    result = run_task(shared_base(models[family]), cfg, model_dir=tmp_path / "m", checkpoint_dir=tmp_path / "c",
                      class_cache_dir=tmp_path / "classes")
    assert result.state == "completed"
    generated = sorted((tmp_path / "classes").rglob("class-*.png"))
    assert len(generated) == 2 and Image.open(generated[0]).size == (32, 32)
    assert np.asarray(Image.open(generated[0])).std() > 0, "a class image must not be blank"


def test_settings_these_families_cannot_use_are_refused_and_theirs_elsewhere(models, tiny_model, demo_data):
    from train.errors import ConfigError
    from train.families import check_for_model

    for family, folder in models.items():
        def check(**overrides):
            check_for_model(config(demo_data, pretrained_model=str(folder), **overrides))

        with pytest.raises(ConfigError, match=rf"snr_gamma.*base model is {family}"):
            check(snr_gamma=5.0)
        with pytest.raises(ConfigError, match=rf"noise_offset.*base model is {family}"):
            check(noise_offset=0.1)
        with pytest.raises(ConfigError, match=rf"guidance_scale.*setting of flux, flux2-klein.*base model is {family}"):
            check(guidance_scale=5.0)
        with pytest.raises(ConfigError, match=r"train_text_encoder.*trains no text encoder LoRA"):
            check(train_text_encoder=True)
        for fmt in ("merged-fp16", "onnx", "mme", "triton"):
            with pytest.raises(ConfigError, match=rf"export format '{fmt}' is not available for {family} .*"
                                                  r"available: lora, kohya"):
                check(export=f"lora,{fmt}")
        check(weighting_scheme="logit_normal", base_quantization="nf4")  # theirs: accepted
    with pytest.raises(ConfigError, match=r"preview_inference_steps.*Qwen-Image samples with at least 2 steps"):
        check_for_model(config(demo_data, pretrained_model=str(models["qwen-image"]), preview_inference_steps=1))
    # ... and the reverse: their flow-matching settings on a Stable Diffusion base.
    with pytest.raises(ConfigError, match=r"weighting_scheme.*z-image, qwen-image models.*base model is sd"):
        check_for_model(config(demo_data, weighting_scheme="logit_normal", pretrained_model=str(tiny_model)))


# --- Z-Image's variants -------------------------------------------------------------------------

def test_turbo_is_told_apart_trains_as_the_reference_with_a_warning_and_samples_without_cfg(
        tiny_z_image, tiny_z_image_turbo, demo_data, tmp_path, capsys):
    from PIL import Image

    from train.pipeline import load_base
    from train.previews import write_previews
    from train.task import run_task

    capsys.readouterr()
    turbo, base = load_base(tiny_z_image_turbo), shared_base(tiny_z_image)
    assert (turbo.variant, base.variant) == ("turbo", "base")
    warning = capsys.readouterr().out
    assert "Z-Image-Turbo base" in warning and "prefer the Z-Image (Base) checkpoint" in warning

    def preview_pixels(model, guidance):
        folder = write_previews(model, [PROMPT], tmp_path / f"p-{model.variant}-{guidance}", 1, num_images=1,
                                steps=2, guidance_scale=guidance, resolution=32, seed=0)
        return np.asarray(Image.open(folder / "0.png"), dtype=np.int16)

    # Turbo is CFG-distilled: a guidance setting changes nothing; on Base it is classifier-free guidance.
    assert (preview_pixels(turbo, 7.5) == preview_pixels(turbo, 0.0)).all()
    assert (preview_pixels(base, 7.5) != preview_pixels(base, 0.0)).any()
    result = run_task(turbo, config(demo_data, max_train_steps=3, export="lora", export_check=True),
                      model_dir=tmp_path / "m", checkpoint_dir=tmp_path / "c")
    entry = json.loads((tmp_path / "m" / "manifest.json").read_text())["formats"]["lora"]
    assert result.state == "completed" and entry["drift"]["mean_abs_diff"] <= 0.05


def test_a_stated_variant_wins_a_wrong_one_is_refused_and_a_hub_folder_name_counts(tiny_z_image, tmp_path):
    from train.errors import ConfigError
    from train.families import family_of, read_model_index

    def variant(folder):
        return family_of(folder).detect_variant(folder, read_model_index(folder))

    named = tmp_path / "models--Tongyi-MAI--Z-Image-Turbo" / "snapshots" / "abc"
    shutil.copytree(tiny_z_image, named)
    (named / "README.md").unlink()
    assert variant(named) == "turbo"                        # no model card: the Hub cache's folder name
    (named / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Z-Image\nAlso see Z-Image-Turbo.\n")
    assert variant(named) == "base"                         # the card's title, not any mention
    repo = "Tongyi-MAI/Z-Image-Turbo"   # a model card's usage example (text: nothing is loaded)
    (named / "README.md").write_text(f"# Z-Image\nDistilled from it: Z-Image-Turbo.\n```python\n"
                                     f"ZImagePipeline.from_pretrained({repo!r})\n```\n")
    assert variant(named) == "turbo"                        # the repository the card's own example loads
    index = json.loads((named / "model_index.json").read_text())
    (named / "model_index.json").write_text(json.dumps({**index, "_variant": "turbo"}))
    assert variant(named) == "turbo"                        # stated in model_index.json (diffusers ignores it)
    (named / "model_index.json").write_text(json.dumps({**index, "_variant": "lightning"}))
    with pytest.raises(ConfigError, match=r"model_index.json: _variant 'lightning' is not a Z-Image variant; "
                                          r"valid: base, turbo"):
        family_of(named)


