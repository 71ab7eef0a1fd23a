"""Output drift: does an exported artifact draw what the in-memory LoRA pipeline draws?

Both sides render the same prompts with the same seeds, scheduler, step count and size; the
numbers compare final RGB images (0-255): mean absolute difference and PSNR. Renders are kept
cheap (few steps, small side): the point is to compare, not to make good pictures.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

DEFAULT_PROMPT = "a photo"


@dataclass(frozen=True)
class RenderSpec:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    resolution: int


AUTO_MAX_RESOLUTION = 256


def render_spec(validation_prompts: Sequence[str], seed: int, cfg, pipe) -> RenderSpec:
    prompts = tuple(validation_prompts)[: cfg.drift_max_prompts] or (DEFAULT_PROMPT,)
    return RenderSpec(prompts, tuple(range(seed, seed + cfg.drift_seeds)), cfg.drift_steps,
                      cfg.drift_resolution or native_resolution(pipe))


def native_resolution(pipe) -> int:
    """The size the model was built for (512 for SD 1.5), capped: drift renders only compare."""
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    return min(int(getattr(denoiser.config, "sample_size", 64)) * scale, AUTO_MAX_RESOLUTION)


def render(pipe, spec: RenderSpec) -> list[np.ndarray]:
    """uint8 HxWx3 images, one per (prompt, seed), in eval mode; the modules' train/eval flags
    are restored afterwards (the training loop may call this mid-run)."""
    view = _view(pipe)
    images = []
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    with _eval_mode(*modules), torch.inference_mode():
        for prompt in spec.prompts:
            for seed in spec.seeds:
                # A CPU generator gives the same starting noise on every device.
                generator = torch.Generator("cpu").manual_seed(seed)
                out = view(prompt=prompt, num_inference_steps=spec.steps, height=spec.resolution,
                           width=spec.resolution, generator=generator, output_type="np")
                images.append(_to_uint8(out.images[0]))
    return images


def _view(pipe):
    """The same pipeline class over the same modules with the fixed render sampler: DPM-Solver
    for DDPM-trained models; flow-matching models keep their own (flow) scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    components = dict(pipe.components)
    if not type(pipe.scheduler).__name__.startswith("FlowMatch"):
        components["scheduler"] = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    extra = {"requires_safety_checker": False} if "safety_checker" in components else {}
    view = type(pipe)(**components, **extra)
    view.set_progress_bar_config(disable=True)
    return view


def compare(reference: Sequence[np.ndarray], images: Sequence[np.ndarray]) -> dict:
    """Mean absolute pixel difference (0-255), its maximum over images, and PSNR in dB
    (None when identical: infinite PSNR does not fit in JSON)."""
    diffs = [np.abs(a.astype(np.float64) - b.astype(np.float64)) for a, b in zip(reference, images, strict=True)]
    mean_abs = float(np.mean([d.mean() for d in diffs]))
    mse = float(np.mean([(d ** 2).mean() for d in diffs]))
    psnr = None if mse == 0 else round(10 * math.log10(255.0 ** 2 / mse), 3)
    return {
        "mean_abs_diff": round(mean_abs, 4),
        "max_image_mean_abs_diff": round(float(max(d.mean() for d in diffs)), 4),
        "psnr_db": psnr,
        "images": len(diffs),
    }


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * 255).round().astype(np.uint8)


@contextmanager
def _eval_mode(*modules):
    flags = [(m, m.training) for m in modules if m is not None]
    for m, _ in flags:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.train(was_training)
