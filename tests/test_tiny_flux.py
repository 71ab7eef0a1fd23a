"""The offline tiny FLUX.1 and FLUX.2 Klein pipelines the flow-matching tests stand on."""

from __future__ import annotations

import subprocess
import sys

import pytest
from scripts_loader import folder_digest

torch = pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.parametrize("family,cls", [("flux", "FluxPipeline"), ("flux2-klein", "Flux2KleinPipeline")])
def test_make_tiny_model_builds_a_deterministic_pipeline_that_generates_offline(tmp_path, family, cls):
    from diffusers import DiffusionPipeline

    for name in ("a", "b"):
        done = subprocess.run([sys.executable, "scripts/make_tiny_model.py", str(tmp_path / name), "--family", family],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b"), "same seed must give byte-identical weights"
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "a")
    assert type(pipe).__name__ == cls
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(prompt="a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images

    first = render()
    assert first.shape == (1, 32, 32, 3) and (first == render()).all()


def test_the_tokenizers_are_real_t5_unigram_and_qwen_byte_level(tmp_path):
    from scripts_loader import load_script
    from transformers import AutoTokenizer

    tiny = load_script("tiny_flux")
    tiny.write_t5_tokenizer(tmp_path / "t5")
    tiny.write_qwen_tokenizer(tmp_path / "qwen")
    t5 = AutoTokenizer.from_pretrained(tmp_path / "t5")
    ids = t5("A photo of sks dog").input_ids
    assert ids[-1] == t5.eos_token_id and t5.decode(ids, skip_special_tokens=True) == "A photo of sks dog"
    qwen = AutoTokenizer.from_pretrained(tmp_path / "qwen")
    text = qwen.apply_chat_template([{"role": "user", "content": "a dog"}], tokenize=False,
                                    add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert qwen.decode(qwen(text).input_ids) == text


def test_full_shape_configs_are_the_published_numbers():
    from scripts_loader import load_script

    tiny = load_script("tiny_flux")
    dev = tiny.flux_configs("flux-dev", t5_vocab=0)
    assert (dev["transformer"]["num_layers"], dev["transformer"]["num_single_layers"]) == (19, 38)
    assert dev["transformer"]["guidance_embeds"] and dev["t5"]["d_model"] == 4096
    assert not tiny.flux_configs("flux-schnell", t5_vocab=0)["transformer"]["guidance_embeds"]
    klein = tiny.klein_configs("flux2-klein-4b", qwen_vocab=0)
    assert klein["transformer"]["joint_attention_dim"] == 3 * klein["qwen"]["hidden_size"] == 7680
