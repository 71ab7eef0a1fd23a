"""The `onnx` export: the LoRA (UNet + text encoder) fused in, exported with the dynamo exporter
together with the VAE decoder, and run with onnxruntime on the CPU: within 1e-3 of torch at
other shapes than the exporter's own check, different from the base, weights in a side file
beside its graph when a graph is too big for one protobuf; in the layout Hugging Face Optimum's
ONNX Runtime pipeline loads, which draws the LoRA pipeline's image (a cached reader env)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_export_formats import attach_lora, load_pipe  # noqa: E402
from train.export import ExportConfig, export_model  # noqa: E402
from train.export import onnx as onnx_export  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    pipe = attach_lora(load_pipe(tiny_model))
    out = tmp_path_factory.mktemp("onnx") / "model"
    # Lower the size limit (to 4 MB of weights) so the tiny UNet (7.6 MB) takes the >2 GB path
    # (weights in a side file) while the text encoder and VAE decoder (< 2 MB) stay in one file.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "PROTOBUF_LIMIT", 68 * 1024**2)
        manifest = export_model(pipe, ExportConfig(formats="onnx", drift_check=False), out, base_model_dir=tiny_model,
                                train_text_encoder=True, rank=4, lora_alpha=8)
    return pipe, out / "onnx", manifest


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_records_the_onnxruntime_check(exported):
    _, _, manifest = exported
    entry = manifest["formats"]["onnx"]
    assert entry["status"] == "ok" and entry["flagged"] is False
    check = entry["onnxruntime_check"]
    assert check["within_tolerance"] and max(check["max_abs_diff"].values()) <= 1e-3
    assert len(check["shapes"]) == 2 and check["shapes"][0] != check["shapes"][1]
    assert check["differs_from_base"] and check["unet_max_abs_diff_vs_base"] > 1e-2
    # This run's file was read by onnxruntime (the installed version); the suite's row says which test.
    assert [r["reader"].split(" CPU")[0] for r in entry["verified"]] == [f"onnxruntime {onnxruntime_version()}"]
    assert "max abs diff" in entry["verified"][0]["how"]
    assert any("onnxruntime" in r["reader"] and r["test"].endswith("test_export_onnx.py") for r in entry["suite_verified"])


def onnxruntime_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime")


def test_big_graphs_keep_weights_in_a_side_file_small_ones_inline(exported):
    _, folder, _ = exported
    # Small tensors (norms, biases) stay inline; the big weights move out, beside their graph.
    assert (folder / "unet" / "model.onnx.data").stat().st_size > 2 * (folder / "unet" / "model.onnx").stat().st_size
    assert not (folder / "text_encoder" / "model.onnx.data").exists()
    assert not (folder / "vae_decoder" / "model.onnx.data").exists()
    assert onnx_export.needs_external_data(3 * 1024**3) and not onnx_export.needs_external_data(1024**3)


def test_onnxruntime_matches_the_lora_pipeline_at_new_shapes(exported):
    pipe, folder, _ = exported
    ids = pipe.tokenizer(["a photo of sks dog"] * 3, padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn(3, 4, 12, 20, generator=torch.Generator().manual_seed(1))  # batch 3, not square
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
        want_unet = pipe.unet(latents, torch.tensor(250.0), hidden).sample  # the live adapter, not a fused copy
        want_image = pipe.vae.decode(latents).sample
    got_hidden = session(folder / "text_encoder" / "model.onnx").run(None, {"input_ids": ids.numpy()})[0]
    got_unet = session(folder / "unet" / "model.onnx").run(None, {"sample": latents.numpy(), "timestep": np.array(250.0, np.float32),
                                                         "encoder_hidden_states": got_hidden})[0]
    got_image = session(folder / "vae_decoder" / "model.onnx").run(None, {"latent_sample": latents.numpy()})[0]
    assert np.abs(got_hidden - hidden.numpy()).max() < 1e-3
    assert np.abs(got_unet - want_unet.numpy()).max() < 1e-3
    assert np.abs(got_image - want_image.numpy()).max() < 1e-3
    # The folder carries what a runtime needs beside the graphs: tokenizer and scheduler config.
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file() and (folder / "scheduler").is_dir()


def test_the_folder_is_in_optimums_layout_with_each_parts_config(exported, tiny_model):
    _, folder, manifest = exported
    import json

    for part, component in (("unet", "unet"), ("text_encoder", "text_encoder"), ("vae_decoder", "vae")):
        assert (folder / part / "model.onnx").is_file()
        assert json.loads((folder / part / "config.json").read_text()) == \
            json.loads((tiny_model / component / "config.json").read_text())
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer").is_dir()
    assert "ORTStableDiffusionPipeline" in manifest["formats"]["onnx"]["load"]


def test_a_base_that_lists_a_feature_extractor_has_it_copied(tiny_model, tmp_path):
    import json
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / "feature_extractor").mkdir()
    (base / "feature_extractor" / "preprocessor_config.json").write_text('{"crop_size": 32}')
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(json.dumps({**index, "feature_extractor": ["transformers", "CLIPImageProcessor"]}))
    onnx_export._copy_from_base(base, tmp_path / "out")
    assert (tmp_path / "out" / "feature_extractor" / "preprocessor_config.json").is_file()
    onnx_export._copy_from_base(tiny_model, tmp_path / "plain")   # the tiny base lists none
    assert not (tmp_path / "plain" / "feature_extractor").exists()


@pytest.fixture(scope="module")
def optimum_env():
    from scripts_loader import load_script

    envs = load_script("reader_envs")
    try:
        return envs.ensure_env("optimum")
    except envs.EnvBuildError as e:  # the message names the package step that failed
        pytest.skip(f"the optimum reader env cannot be installed here: {e}")


def test_optimums_ort_pipeline_loads_the_export_and_draws_the_lora_image(exported, optimum_env, tmp_path):
    """What a user of Optimum does with the folder: ORTStableDiffusionPipeline.from_pretrained."""
    import json
    import subprocess
    from pathlib import Path

    pipe, folder, manifest = exported
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "latents.npy", latents.numpy())
    proc = subprocess.run([str(optimum_env / "bin" / "python"), str(Path(__file__).with_name("optimum_render.py")),
                           str(folder), str(tmp_path / "latents.npy"), str(tmp_path / "ort.npy"), "a photo of sks dog",
                           "2"], capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "ort.npy")
    with torch.no_grad():   # the LoRA pipeline in torch, the same scheduler, latents and steps
        want = pipe("a photo of sks dog", num_inference_steps=2, latents=latents.clone(), height=latents.shape[2] * pipe.vae_scale_factor,
                    width=latents.shape[3] * pipe.vae_scale_factor, output_type="np",
                    generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-3
    versions = json.loads((tmp_path / "ort.npy.json").read_text())
    assert versions["pipeline"] == "ORTStableDiffusionPipeline"
    # the suite's reader of this format and family is named in the manifest (this test is it)
    assert any("optimum-onnx 0.1.0" in r["reader"] and "ORTStableDiffusionPipeline" in r["reader"]
               and r["test"] == "tests/train/test_export_onnx.py" for r in manifest["formats"]["onnx"]["suite_verified"])
