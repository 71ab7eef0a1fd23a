"""Plain helpers shared by the train tests (rendering, comparing LoRA files, killing and resuming
a run, the session's loaded bases)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts_loader import ROOT, load_script  # noqa: F401 (load_script re-exported for the tests here)

# Small but real settings: every code path (previews, checkpoints, export) runs. (Here, not in
# conftest.py: `from conftest import` resolves to whichever test folder's conftest loaded last.)
FAST = dict(resolution=32, max_train_steps=6, learning_rate=5e-3, preview_every=3, preview_inference_steps=2,
            num_preview_images=1, checkpoint_every=3, log_every=2, class_inference_steps=2, export_check=False)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m train *args`` in a subprocess, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sigkill_at_state(cli_args: list[str], out: Path, step: int, timeout: float = 240) -> None:
    """Run ``python -m train *cli_args`` and SIGKILL it as soon as the training state of ``step``
    exists under ``out/checkpoints/state``: mid-step, mid-save or mid-preview, as a spot
    interruption would. Fails if the run ends first."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "train", *cli_args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not (out / "checkpoints" / "state" / f"step-{step:06d}").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"no state of step {step} after {timeout:.0f} s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_then_resume(cli_args: list[str], out: Path, step: int) -> subprocess.CompletedProcess:
    """A spot interruption and its restart: ``python -m train *cli_args`` SIGKILLed as soon as the
    training state of ``step`` exists (no model written yet), then run again with ``--resume``,
    which must finish (exit 0) saying it resumed. Returns the resumed run."""
    sigkill_at_state(cli_args, out, step=step)
    assert not (out / "model" / "pytorch_lora_weights.safetensors").exists()
    resumed = run_cli(*cli_args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    return resumed


_BASES: dict = {}


def shared_base(path, quantization: str = "none"):
    """One loaded base per (folder, quantization) for the session, as a warm worker keeps it
    (a test that attaches a LoRA to it detaches it again)."""
    from train.pipeline import load_base

    key = (str(path), quantization)
    if key not in _BASES:
        _BASES[key] = load_base(path, base_quantization=quantization)
    return _BASES[key]


def flow_pipeline(folder, family: str):
    """A fresh fp32 pipeline of a flow-matching family (FLUX, klein, Z-Image, Qwen-Image) from ``folder``."""
    import torch

    from train.families import family_named

    return family_named(family).load_pipeline(folder, dtype=torch.float32)


def flow_render(pipe, seed: int = 3, prompt: str = "a photo of sks toy", **kwargs):
    """A float image (numpy HxWx3) from a flow-matching pipeline: 2 steps, 32 px, a fixed seed."""
    import torch

    with torch.no_grad():
        return pipe(prompt=prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(seed), **kwargs).images[0]


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


def eval_loss(base, cfg, n: int = 6) -> float:
    """The family's objective on fixed draws (noise, sigmas) over ``cfg``'s instance images: a
    deterministic measure of what a LoRA attached to ``base`` has learned."""
    import torch

    from train.data import load_images, to_tensor
    from train.objective import weighted_loss

    family = base.family
    examples = load_images(cfg.instance_data, prompt=cfg.instance_prompt, resolution=cfg.resolution,
                           max_pixels=cfg.max_image_pixels)
    pixels = torch.stack([to_tensor(e, cfg.resolution, center_crop=True, random_flip=False) for e in examples])
    with torch.no_grad(), family.prompt_encoding(base):
        mean, std = family.encode_pixels(base, pixels)
        prompts = family.encode_prompts(base, [cfg.instance_prompt] * len(examples))
        total = 0.0
        for k in range(n):
            g = torch.Generator().manual_seed(100 + k)
            noised = family.noise(base, cfg, family.sample_latents(base, mean, std, g), g)
            pred = family.denoise(base, noised, prompts, [])
            total += float(weighted_loss(cfg, pred, noised, n_instance=len(examples))[0])
    return total / n
