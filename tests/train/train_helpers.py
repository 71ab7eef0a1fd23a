"""Plain helpers shared by the train tests (rendering, comparing LoRA files)."""

from __future__ import annotations

from pathlib import Path

from scripts_loader import load_script  # noqa: F401 (re-exported for the tests here)





def render(pipe, prompt: str = "a photo of sks toy", seed: int = 7, size: int = 32):
    """A float image (numpy HxWx3) from ``pipe`` with a fixed seed and a fast scheduler."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    view = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                   unet=pipe.unet, scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    view.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = view(prompt, num_inference_steps=3, guidance_scale=3.0, height=size, width=size,
                   generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images[0]


def fresh_pipeline(model_dir: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(model_dir) / "pytorch_lora_weights.safetensors")


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
