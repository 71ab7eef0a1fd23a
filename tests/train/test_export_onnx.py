"""The `onnx` export: the LoRA (UNet + text encoder) fused in, exported with the dynamo exporter
together with the VAE decoder, and run with onnxruntime on the CPU: within 1e-3 of torch at
other shapes than the exporter's own check, different from the base, weights in a side file
when a graph is too big for one protobuf."""

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
    # Small tensors (norms, biases) stay inline; the big weights move out.
    assert (folder / "unet.onnx.data").stat().st_size > 2 * (folder / "unet.onnx").stat().st_size
    assert not (folder / "text_encoder.onnx.data").exists() and not (folder / "vae_decoder.onnx.data").exists()
    assert onnx_export.needs_external_data(3 * 1024**3) and not onnx_export.needs_external_data(1024**3)


def test_onnxruntime_matches_the_lora_pipeline_at_new_shapes(exported):
    pipe, folder, _ = exported
    ids = pipe.tokenizer(["a photo of sks dog"] * 3, padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn(3, 4, 12, 20, generator=torch.Generator().manual_seed(1))  # batch 3, not square
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
        want_unet = pipe.unet(latents, torch.tensor(250.0), hidden).sample  # the live adapter, not a fused copy
        want_image = pipe.vae.decode(latents).sample
    got_hidden = session(folder / "text_encoder.onnx").run(None, {"input_ids": ids.numpy()})[0]
    got_unet = session(folder / "unet.onnx").run(None, {"sample": latents.numpy(), "timestep": np.array(250.0, np.float32),
                                                         "encoder_hidden_states": got_hidden})[0]
    got_image = session(folder / "vae_decoder.onnx").run(None, {"latent_sample": latents.numpy()})[0]
    assert np.abs(got_hidden - hidden.numpy()).max() < 1e-3
    assert np.abs(got_unet - want_unet.numpy()).max() < 1e-3
    assert np.abs(got_image - want_image.numpy()).max() < 1e-3
    # The folder carries what a runtime needs beside the graphs: tokenizer and scheduler config.
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file() and (folder / "scheduler").is_dir()
