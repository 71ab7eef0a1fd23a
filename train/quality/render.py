"""Render the evaluation set with the family's own preview pipeline, over the modules in memory.

The same pipeline, sampler, autocast and prompt-encoding context as the previews
(train/previews.py), so every family that previews can be evaluated. Images render a few
per pipeline call (``BATCH``). Drift pairs render each
drift prompt with the LoRA and with it switched off (peft's own ``enable_adapters``) at the
same seed. The switched-off render depends only on the base model and the render settings,
so it is the same for every task on a host: it is kept in ``Scorers.base_renders`` and
rendered once per host, not once per task.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from train.quality.scores import Image

CACHE_LIMIT = 64   # base renders kept per host (a few distinct drift prompts in practice)
BATCH = 4          # images per pipeline call


@contextlib.contextmanager
def lora_disabled(base):
    """Every LoRA layer of the base's modules switched off for the block, then on again,
    with each parameter's requires_grad as it was."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in base.torch_modules().values() for m in module.modules() if isinstance(m, BaseTunerLayer)]
    grads = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in grads:
            p.requires_grad_(flag)


@contextlib.contextmanager
def sampling(base):
    """Eval mode, no grad, the base's autocast and the family's prompt-encoding context (as
    previews); the modules' train/eval flags are restored afterwards."""
    import torch

    from train.previews import autocast

    modules = base.torch_modules()
    flags = {name: m.training for name, m in modules.items()}
    for m in modules.values():
        m.eval()
    try:
        with torch.no_grad(), autocast(base), base.family.prompt_encoding(base):
            yield base.pipeline()
    finally:
        for name, m in modules.items():
            m.train(flags[name])


def render(base, pipe, jobs: list[tuple[str, int]], settings) -> list:
    """One PIL image per (prompt, seed), rendered BATCH at a time: on a GPU a batch of a few
    costs little more than one image. Each image has its own CPU generator, so its starting
    noise is the same on every device and in any batch. Guidance goes through the family's
    sampling keywords, as the previews' does (Qwen-Image's true CFG, none on a distilled model)."""
    import torch

    sampling = base.family.sampling_kwargs(base, settings.guidance_scale)
    images = []
    for i in range(0, len(jobs), BATCH):
        chunk = jobs[i:i + BATCH]
        generators = [torch.Generator(device="cpu").manual_seed(seed) for _, seed in chunk]
        negative = sampling.get("negative_prompt")
        batch = {**sampling, "negative_prompt": [negative] * len(chunk)} if isinstance(negative, str) else sampling
        images += pipe(prompt=[prompt for prompt, _ in chunk], num_inference_steps=settings.steps,
                       height=settings.resolution, width=settings.resolution,
                       num_images_per_prompt=1, generator=generators, **batch).images
    return images


def render_set(base, settings, out: Path, base_renders: dict) -> list[Image]:
    """Render the recontextualisation prompts and the drift pairs into ``out`` (PNG)."""
    subject = [(p, s) for p in settings.prompts for s in settings.seeds]
    drift = [(p, s) for p in settings.drift_prompts for s in settings.seeds]
    with sampling(base) as pipe:
        # Drift with the LoRA renders in the same batches as drift without it: a pair differs
        # by the LoRA only, not by how the batch was composed.
        rendered = render(base, pipe, subject, settings) + render(base, pipe, drift, settings)
        missing = [job for job in drift if render_key(base, settings, *job) not in base_renders]
        if missing:
            with lora_disabled(base):
                for job, image in zip(missing, render(base, pipe, missing, settings)):
                    _remember(base_renders, render_key(base, settings, *job), _png(image))
    images = [_save(image, out, "subject" if k < len(subject) else "drift_lora", k if k < len(subject)
                    else k - len(subject), *job) for k, (job, image) in enumerate(zip(subject + drift, rendered))]
    for k, job in enumerate(drift):
        path = out / f"drift_base-{k}.png"
        path.write_bytes(base_renders[render_key(base, settings, *job)])
        images.append(Image(path, job[0], job[1], "drift_base"))
    return images


def render_key(base, settings, prompt: str, seed: int) -> tuple:
    """Everything a base-model render depends on."""
    return (str(base.path), base.family.name, base.mixed_precision, base.quantization, prompt, seed,
            settings.steps, settings.guidance_scale, settings.resolution)


def _save(image, out: Path, kind: str, index: int, prompt: str, seed: int) -> Image:
    path = out / f"{kind}-{index}.png"
    image.save(path)
    return Image(path, prompt, seed, kind)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _remember(cache: dict, key: tuple, png: bytes) -> None:
    while len(cache) >= CACHE_LIMIT:
        cache.pop(next(iter(cache)))
    cache[key] = png
