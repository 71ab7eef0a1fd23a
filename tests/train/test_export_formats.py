"""Merged, quantized and packaged exports on the tiny pipeline: each CPU format loads with
diffusers and generates, fp16 halves the UNet and draws (nearly) what the LoRA draws, GPU-only
formats skip with their reason, the base modules stay bit-identical, the manifest is true,
the MME archive is laid out for SageMaker, and the CLI re-exports from a LoRA folder."""

from __future__ import annotations

import json
import logging
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from train.export import FORMATS, ExportConfig, ExportError, export_model  # noqa: E402
from train.export.__main__ import main as cli_main  # noqa: E402
from train.export.manifest import verify_manifest  # noqa: E402
from train.export.mme import write_archive  # noqa: E402

RANK, ALPHA = 4, 8
PROMPT = "a photo of sks dog"
FAST = dict(drift_steps=2, drift_resolution=64)
ALL = ("lora", "kohya", "merged-fp16", "merged-int8", "merged-nf4", "merged-bnb8", "mme")


def load_pipe(path, **kwargs):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attach_lora(pipe, seed: int = 1):
    """UNet + text-encoder LoRA with trained-looking (non-zero) B matrices."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
    return pipe


def draw(pipe) -> np.ndarray:
    out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(0))
    return out.images[0]


def snapshot(pipe) -> dict:
    return {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder", "vae")
            for k, v in getattr(pipe, name).state_dict().items()}


@pytest.fixture(scope="module")
def trained(tiny_model):
    pipe = attach_lora(load_pipe(tiny_model))
    return pipe, snapshot(pipe)


@pytest.fixture(scope="module")
def exported(trained, tiny_model, tmp_path_factory):
    pipe, _ = trained
    out = tmp_path_factory.mktemp("formats") / "model"
    manifest = export_model(pipe, ExportConfig(formats=ALL, mme_source="merged-fp16", **FAST), out,
                            base_model_dir=tiny_model, train_text_encoder=True, rank=RANK, lora_alpha=ALPHA,
                            validation_prompts=[PROMPT], extra_manifest={"rank": RANK})
    return out, manifest


def test_exporting_every_format_leaves_the_base_modules_bit_identical(trained, exported):
    pipe, before = trained
    after = snapshot(pipe)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("folder, dtype", [("merged-fp16", None), ("merged-int8", torch.bfloat16)])
def test_merged_cpu_formats_load_with_diffusers_and_generate(exported, folder, dtype):
    out, manifest = exported
    pipe = load_pipe(out / folder, **({"dtype": dtype} if dtype else {}))  # as the manifest's "load" says
    assert manifest["formats"][folder]["load"].startswith(f"StableDiffusionPipeline.from_pretrained('{folder}'")
    assert not getattr(pipe.unet, "peft_config", None)  # the LoRA is fused in, not attached
    image = draw(pipe)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 0


def test_merged_int8_unet_holds_int8_weights(exported):
    out, manifest = exported
    unet_config = json.loads((out / "merged-int8" / "unet" / "config.json").read_text())
    assert unet_config["quantization_config"]["quant_method"] == "torchao"
    pipe = load_pipe(out / "merged-int8", dtype=torch.bfloat16)
    weight = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert "Int8" in type(weight).__name__
    assert manifest["formats"]["merged-int8"]["drift"]["images"] == 1  # its drift was measured


def test_merged_fp16_unet_is_about_half_the_fp32_size(exported, tiny_model):
    out, _ = exported
    fp32 = (tiny_model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    fp16 = (out / "merged-fp16" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert 0.45 < fp16 / fp32 < 0.55


def test_merged_fp16_draws_what_the_in_memory_lora_draws(exported):
    _, manifest = exported
    entry = manifest["formats"]["merged-fp16"]
    assert entry["status"] == "ok" and entry["flagged"] is False
    assert entry["drift"]["mean_abs_diff"] < 1.0  # of 255: rounding, not a different picture
    assert entry["drift"]["psnr_db"] > 40
    assert entry["load_seconds"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU these formats run (scripts/gpu_check_exports.py)")
def test_gpu_formats_are_skipped_with_their_reason_and_others_unaffected(exported):
    out, manifest = exported
    for name in ("merged-nf4", "merged-bnb8"):
        assert manifest["formats"][name] == {
            "status": "skipped", "reason": "skipped: needs a GPU (bitsandbytes quantization through diffusers)"}
        assert not (out / name).exists()
    assert [n for n, e in manifest["formats"].items() if e["status"] == "ok"] == \
        ["lora", "kohya", "merged-fp16", "merged-int8", "mme"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU nf4 runs")
def test_mme_of_a_gpu_format_is_skipped_on_cpu_not_failed(trained, tiny_model, tmp_path):
    pipe, _ = trained
    manifest = export_model(pipe, ExportConfig(formats=("lora", "merged-nf4", "mme"), mme_source="merged-nf4",
                                               drift_check=False), tmp_path, base_model_dir=tiny_model,
                            train_text_encoder=True, rank=RANK, lora_alpha=ALPHA)
    assert manifest["formats"]["mme"] == {"status": "skipped", "reason": "skipped: packs merged-nf4, which needs a GPU"}
    assert manifest["formats"]["lora"]["status"] == "ok"


def test_manifest_hashes_match_every_exported_file(exported):
    out, manifest = exported
    assert verify_manifest(out) == []
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk
    assert "merged-fp16/unet/diffusion_pytorch_model.safetensors" in listed
    (out / "lora_kohya.safetensors").write_bytes(b"tampered")
    try:
        assert verify_manifest(out) == ["lora_kohya.safetensors: size or sha256 differs from the manifest"]
    finally:
        (out / "lora_kohya.safetensors").unlink()  # the module fixture's later users do not read it


def test_mme_archive_holds_a_loadable_pipeline_at_its_root(exported, tmp_path):
    out, manifest = exported
    assert manifest["formats"]["mme"]["packs"] == "merged-fp16"
    with tarfile.open(out / "mme" / "model.tar.gz") as tar:
        names = tar.getnames()
        assert "model_index.json" in names and "unet/diffusion_pytorch_model.safetensors" in names
        assert not [n for n in names if n.startswith(("/", "..")) or "merged-fp16" in n]
        serving = json.load(tar.extractfile("serving.json"))
        tar.extractall(tmp_path, filter="data")
    assert serving["format"] == "merged-fp16"
    assert serving["base_model"]["weights_sha256"] == manifest["base_model"]["weights_sha256"]
    assert draw(load_pipe(tmp_path)).std() > 0
    # The packed handler serves it as an endpoint would: model_fn(unpacked dir), predict_fn(request).
    response = serve(tmp_path, {"inputs": PROMPT, "parameters": {"num_inference_steps": 2, "height": 64,
                                                                 "width": 64, "seed": 3}})
    assert len(response["images"]) == 1


def serve(model_dir, request: dict) -> dict:
    import base64
    import importlib.util
    import io

    from PIL import Image

    spec = importlib.util.spec_from_file_location("mme_inference", model_dir / "code" / "inference.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    model = handler.model_fn(str(model_dir))
    model.set_progress_bar_config(disable=True)
    response = handler.predict_fn(request, model)
    for encoded in response["images"]:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (64, 64)
    return response


def test_mme_lora_archive_is_served_on_top_of_its_base(exported, tmp_path, tiny_model):
    out, _ = exported
    archive = write_archive([out / "pytorch_lora_weights.safetensors"], tmp_path / "lora.tar.gz", source="lora",
                            base_model_dir=tiny_model)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    # serving.json names the base by path and weights hash; here that path is the tiny model.
    assert len(serve(tmp_path / "unpacked", {"inputs": PROMPT, "parameters": {"num_inference_steps": 2,
                                             "height": 64, "width": 64}})["images"]) == 1


def test_mme_archive_is_reproducible(exported, tmp_path, tiny_model):
    out, _ = exported
    a = write_archive([out / "pytorch_lora_weights.safetensors"], tmp_path / "a.tar.gz", source="lora",
                      base_model_dir=tiny_model)
    b = write_archive([out / "pytorch_lora_weights.safetensors"], tmp_path / "b.tar.gz", source="lora",
                      base_model_dir=tiny_model)
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        assert sorted(n for n in tar.getnames()) == ["code", "code/inference.py", "pytorch_lora_weights.safetensors",
                                                     "serving.json"]


def test_drift_over_the_threshold_is_flagged_and_logged(trained, tiny_model, tmp_path, caplog):
    pipe, _ = trained
    with caplog.at_level(logging.WARNING, logger="train.export"):
        manifest = export_model(pipe, ExportConfig(formats=("merged-fp16",), drift_threshold=0.0, **FAST), tmp_path,
                                base_model_dir=tiny_model, train_text_encoder=True, rank=RANK, lora_alpha=ALPHA)
    assert manifest["formats"]["merged-fp16"]["flagged"] is True
    assert "merged-fp16: drift mean_abs_diff" in caplog.text and "over the threshold" in caplog.text


def test_a_failing_format_fails_the_export_but_keeps_the_others(trained, tiny_model, tmp_path):
    pipe, _ = trained
    with pytest.raises(ExportError, match="mme: .*merged-int8 is not among the exported formats"):
        export_model(pipe, ExportConfig(formats=("lora", "mme"), mme_source="merged-int8", drift_check=False),
                     tmp_path, base_model_dir=tiny_model, train_text_encoder=True, rank=RANK, lora_alpha=ALPHA)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["formats"]["lora"]["status"] == "ok"
    assert manifest["formats"]["mme"]["status"] == "failed"


def test_cli_exports_again_from_an_existing_lora_folder(exported, tiny_model, tmp_path, capsys):
    src, first = exported
    code = cli_main(["--lora", str(src), "--base", str(tiny_model), "--out", str(tmp_path),
                     "--formats", "kohya,merged-fp16", "--drift-steps", "2", "--drift-resolution", "64"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["hyperparameters"]["rank"] == RANK  # carried over from the source manifest
    assert manifest["drift_renders"]["prompts"] == [PROMPT]
    assert manifest["lora"]["train_text_encoder"] is True and manifest["lora"]["lora_alpha"] == ALPHA
    assert manifest["formats"]["merged-fp16"]["drift"]["mean_abs_diff"] < 1.0
    assert manifest["formats"]["kohya"]["drift"]["mean_abs_diff"] < 0.5
    assert "manifest:" in capsys.readouterr().out


def test_cli_rejects_a_bad_format_listing_the_valid_ones(tiny_model, tmp_path, capsys):
    code = cli_main(["--lora", str(tmp_path), "--base", str(tiny_model), "--out", str(tmp_path / "o"),
                     "--formats", "lora,gguf"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'gguf'" in err and ", ".join(FORMATS) in err


def test_cli_help_runs_as_a_module_and_lists_the_formats():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "train.export", "--help"], capture_output=True, text=True,
                         cwd=root, timeout=60)
    assert out.returncode == 0
    assert "--lora" in out.stdout and "merged-int8" in out.stdout and "--drift-threshold" in out.stdout
