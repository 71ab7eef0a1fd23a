"""The offline tiny Z-Image and Qwen-Image pipelines the tests stand on, and the published shapes
the GPU benchmarks build."""

from __future__ import annotations

import pytest
from scripts_loader import folder_digest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("family,cls", [("z-image", "ZImagePipeline"), ("qwen-image", "QwenImagePipeline")])
def test_the_builder_is_deterministic_and_its_pipeline_generates_offline(make_tiny_model, tmp_path, family, cls):
    from diffusers import DiffusionPipeline

    a, b = (make_tiny_model.build_pipeline(tmp_path / n, family=family) for n in "ab")
    assert folder_digest(a) == folder_digest(b), "same seed must give byte-identical weights"
    pipe = DiffusionPipeline.from_pretrained(a)
    assert type(pipe).__name__ == cls
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(prompt="a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images

    first = render()
    assert first.shape == (1, 32, 32, 3) and (first == render()).all() and first.std() > 0


def test_a_variant_is_only_for_families_that_have_one(make_tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"--variant turbo: qwen-image models have no variants"):
        make_tiny_model.build_pipeline(tmp_path / "q", family="qwen-image", variant="turbo")


def test_full_shapes_are_the_published_model_sizes():
    """Z-Image 6.15B + Qwen3-4B, Qwen-Image 20.4B + Qwen2.5-VL-7B (8.3B), counted on the meta device."""
    from diffusers import QwenImageTransformer2DModel, ZImageTransformer2DModel
    from scripts_loader import load_script
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3Config, Qwen3Model

    tiny = load_script("tiny_dit")
    z, q = tiny.z_image_configs("z-image-6b", vocab=0), tiny.qwen_image_configs("qwen-image-20b", vocab=0)
    with torch.device("meta"):
        sizes = [sum(p.numel() for p in m.parameters()) / 1e9 for m in (
            ZImageTransformer2DModel(**z["transformer"]), Qwen3Model(Qwen3Config(**z["text"])),
            QwenImageTransformer2DModel(**q["transformer"]),
            Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**q["text"])))]
    assert [round(s, 2) for s in sizes] == [6.15, 4.02, 20.43, 8.29]
