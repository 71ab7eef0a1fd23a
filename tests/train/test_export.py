"""LoRA exports on the tiny pipeline: the diffusers file and the kohya copy reload to the same
images as the in-memory LoRA (alpha != rank, text encoder trained), the manifest is true, the
in-memory base is left alone, and bad options fail with the valid values listed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from train.export import ExportConfig, ExportConfigError, ExportError, export_model  # noqa: E402
from train.export.manifest import verify_manifest  # noqa: E402

RANK, ALPHA = 4, 8  # alpha != rank: a reload that ignores the adapter metadata draws a different image
PROMPT = "a photo of sks dog"
FAST = dict(drift_steps=2, drift_resolution=64)
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def load_pipe(path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attach_lora(pipe, *, text_encoder: bool, seed: int = 1):
    """A LoRA as training leaves it: gaussian A, non-zero B (so it changes the image)."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS,
                                     init_lora_weights="gaussian"))
    modules = [pipe.unet]
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TE_TARGETS,
                                                 init_lora_weights="gaussian"))
        modules.append(pipe.text_encoder)
    with torch.no_grad():
        for module in modules:
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.2)
    return pipe


def draw(pipe, seed: int = 0) -> np.ndarray:
    out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return (out.images[0] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tiny_model):
    """The tiny pipeline with a UNet + text-encoder LoRA attached in memory, and its image."""
    pipe = attach_lora(load_pipe(tiny_model), text_encoder=True)
    return pipe, draw(pipe)


@pytest.fixture(scope="module")
def exported(trained, tiny_model, tmp_path_factory):
    pipe, _ = trained
    out = tmp_path_factory.mktemp("export") / "model"
    manifest = export_model(pipe, ExportConfig(formats=("lora", "kohya"), **FAST), out, base_model_dir=tiny_model,
                            train_text_encoder=True, rank=RANK, lora_alpha=ALPHA, validation_prompts=[PROMPT],
                            extra_manifest={"learning_rate": 1e-4, "max_train_steps": 10})
    return out, manifest


def test_diffusers_lora_reloads_to_the_same_image_and_differs_from_base(trained, exported, tiny_model):
    _, image = trained
    out, _ = exported
    base = load_pipe(tiny_model)
    base_image = draw(base)
    base.load_lora_weights(out)
    assert np.array_equal(draw(base), image)
    assert np.abs(base_image.astype(int) - image).mean() > 5  # the LoRA visibly changes the picture


def test_kohya_copy_has_unet_and_text_encoder_keys_with_the_trained_alpha(trained, exported):
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    pipe, _ = trained
    out, _ = exported
    state = load_file(out / "lora_kohya.safetensors")
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    n_unet = sum(isinstance(m, LoraLayer) for m in pipe.unet.modules())
    n_te = sum(isinstance(m, LoraLayer) for m in pipe.text_encoder.modules())
    assert len([m for m in modules if m.startswith("lora_unet_")]) == n_unet > 0
    # A1111/ComfyUI naming of the SD1.x text encoder, whatever transformers' module nesting.
    assert len([m for m in modules if m.startswith("lora_te_text_model_encoder_layers_")]) == n_te > 0
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    for m in modules:
        assert state[f"{m}.alpha"].item() == ALPHA
        assert state[f"{m}.lora_down.weight"].shape[0] == RANK
        assert state[f"{m}.lora_up.weight"].shape[1] == RANK


def test_kohya_copy_reloads_in_diffusers_to_the_same_image(trained, exported, tiny_model):
    _, image = trained
    out, _ = exported
    pipe = load_pipe(tiny_model)
    pipe.load_lora_weights(out, weight_name="lora_kohya.safetensors")
    assert np.array_equal(draw(pipe), image)


def test_unet_only_lora_exports_no_text_encoder_keys(tiny_model, tmp_path):
    from safetensors.torch import load_file

    pipe = attach_lora(load_pipe(tiny_model), text_encoder=False, seed=2)
    image = draw(pipe)
    export_model(pipe, ExportConfig(formats=("lora", "kohya"), kohya_name="sks", drift_check=False), tmp_path,
                 base_model_dir=tiny_model, train_text_encoder=False, rank=RANK, lora_alpha=ALPHA)
    assert not [k for k in load_file(tmp_path / "sks.safetensors") if k.startswith("lora_te")]
    fresh = load_pipe(tiny_model)
    fresh.load_lora_weights(tmp_path, weight_name="sks.safetensors")
    assert np.array_equal(draw(fresh), image)


def test_save_dtype_fp16_halves_the_file_and_still_reloads(trained, exported, tiny_model, tmp_path):
    from safetensors.torch import load_file

    pipe, image = trained
    export_model(pipe, ExportConfig(formats=("lora",), save_dtype="fp16", drift_check=False), tmp_path,
                 base_model_dir=tiny_model, train_text_encoder=True, rank=RANK, lora_alpha=ALPHA)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert {t.dtype for t in load_file(path).values()} == {torch.float16}
    fp32_bytes = (exported[0] / "pytorch_lora_weights.safetensors").stat().st_size
    assert path.stat().st_size < 0.6 * fp32_bytes
    fresh = load_pipe(tiny_model)
    fresh.load_lora_weights(tmp_path)
    assert np.abs(draw(fresh).astype(int) - image).mean() < 2


def test_manifest_lists_every_file_with_true_hashes_and_records_drift(exported, tiny_model):
    out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert verify_manifest(out) == []
    assert {f["path"] for f in manifest["files"]} == {"pytorch_lora_weights.safetensors", "lora_kohya.safetensors"}
    assert manifest["base_model"]["path"] == str(tiny_model.resolve())
    assert len(manifest["base_model"]["weights_sha256"]) == 64
    assert manifest["hyperparameters"] == {"learning_rate": 1e-4, "max_train_steps": 10}
    assert manifest["lora"] == {"rank": RANK, "lora_alpha": ALPHA, "train_text_encoder": True, "save_dtype": "fp32"}
    for name in ("lora", "kohya"):
        entry = manifest["formats"][name]
        assert entry["status"] == "ok" and entry["flagged"] is False
        assert entry["drift"]["mean_abs_diff"] == 0.0  # exact reload on CPU fp32
    assert manifest["timings"]["total_seconds"] > 0


def test_artifacts_are_world_readable(exported):
    out, _ = exported
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_export_leaves_the_in_memory_pipeline_as_it_was(trained, tiny_model, tmp_path):
    pipe, image = trained
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.unet.train()  # mid-training state: the export must hand it back in train mode
    export_model(pipe, ExportConfig(formats=("lora", "kohya"), **FAST), tmp_path, base_model_dir=tiny_model,
                 train_text_encoder=True, rank=RANK, lora_alpha=ALPHA)
    assert pipe.unet.training
    pipe.unet.eval()
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert np.array_equal(draw(pipe), image)


def test_rank_that_does_not_match_the_adapter_is_refused(trained, tiny_model, tmp_path):
    pipe, _ = trained
    with pytest.raises(ExportError, match="lora_alpha=8"):
        export_model(pipe, ExportConfig(drift_check=False), tmp_path, base_model_dir=tiny_model,
                     train_text_encoder=True, rank=RANK, lora_alpha=RANK)


def test_unknown_format_lists_the_valid_formats():
    with pytest.raises(ExportConfigError, match="valid formats: lora, kohya, merged-fp16, merged-int8"):
        ExportConfig(formats=("lora", "tensorrt"))
    with pytest.raises(ExportConfigError, match="fp32, fp16, bf16"):
        ExportConfig(save_dtype="int4")


def test_config_accepts_sagemaker_strings_and_rejects_unknown_keys():
    cfg = ExportConfig.from_dict({"formats": '"kohya,lora"', "drift_steps": "3", "drift_check": "false"})
    assert cfg.formats == ("lora", "kohya") and cfg.drift_steps == 3 and cfg.drift_check is False
    with pytest.raises(ExportConfigError, match="valid keys: .*drift_steps"):
        ExportConfig.from_dict({"drift_stepz": 3}, source="task t1")


def test_importing_the_export_package_does_not_load_torch():
    # train/config.py validates export names through train.export at startup: `--help` and
    # config errors must stay fast.
    import subprocess
    import sys

    code = "import sys, train.export; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["False", "False"]
