"""The offline tiny pipeline every other test and the demo stand on."""

from __future__ import annotations

import subprocess
import sys

import pytest
from scripts_loader import folder_digest

torch = pytest.importorskip("torch")


def test_cli_builds_a_loadable_deterministic_pipeline(tmp_path, tiny_model):
    from diffusers import DiffusionPipeline

    out = tmp_path / "again"
    subprocess.run([sys.executable, "scripts/make_tiny_model.py", str(out)], check=True, capture_output=True)
    assert folder_digest(out) == folder_digest(tiny_model), "same seed must give byte-identical weights"

    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    pipe.set_progress_bar_config(disable=True)

    def render():
        g = torch.Generator().manual_seed(3)
        return pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32, generator=g, output_type="np").images

    first, second = render(), render()
    assert first.shape == (1, 32, 32, 3)
    assert (first == second).all(), "a fixed generator seed must reproduce the image"


def test_tokenizer_is_real_clip_byte_level(tiny_model):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model / "tokenizer")
    assert len(tok) == 514 and tok.model_max_length == 77
    ids = tok("A photo of sks dog").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a photo of sks dog"


def test_prediction_type_is_written_to_the_scheduler(tiny_model_v):
    from diffusers import DDPMScheduler

    assert DDPMScheduler.from_pretrained(tiny_model_v / "scheduler").config.prediction_type == "v_prediction"


def test_cli_builds_a_tiny_sdxl_pipeline_and_refuses_a_mismatched_arch(tmp_path, tiny_sdxl_model):
    from diffusers import DiffusionPipeline

    out = tmp_path / "xl"
    subprocess.run([sys.executable, "scripts/make_tiny_model.py", str(out), "--family", "sdxl"], check=True,
                   capture_output=True)
    assert folder_digest(out) == folder_digest(tiny_sdxl_model), "same seed must give byte-identical weights"
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.text_encoder_2.config.projection_dim == 32
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(3)).images[0]
    assert image.shape == (32, 32, 3)
    bad = subprocess.run([sys.executable, "scripts/make_tiny_model.py", str(tmp_path / "x"), "--family", "sd",
                          "--arch", "sdxl"], capture_output=True, text=True)
    assert bad.returncode == 2 and "arch 'sdxl' is a sdxl model, not sd" in bad.stderr
