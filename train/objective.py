"""The DreamBooth denoising objective: noise, timesteps, target, min-SNR weights, prior loss.

``weighted_loss`` is every family's loss (the family's ``noise`` gives target and per-sample
weight); the DDPM helpers above it are what the SD and SDXL families noise with. Every random
draw comes from the generator the caller passes in, seeded by (seed, step), so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

from train.config import TrainConfig
from train.pipeline import BaseModel


def add_noise(base: BaseModel, cfg: TrainConfig, latents, rng) -> tuple[Any, Any, Any]:
    """(noisy latents, noise, timesteps) for one micro-batch."""
    import torch

    shape, device = latents.shape, latents.device
    noise = torch.randn(shape, generator=rng, dtype=torch.float32)
    if cfg.noise_offset:
        # A per-channel constant shift: lets the model learn overall brightness (Guttenberg 2023).
        noise = noise + cfg.noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=rng)
    noise = noise.to(device, latents.dtype)
    T = base.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, T, (shape[0],), generator=rng).to(device).long()
    return base.noise_scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def target_for(base: BaseModel, latents, noise, timesteps):
    kind = base.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return base.noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r} in the base model's scheduler config")


def snr_weights(base: BaseModel, timesteps, gamma: float):
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma)/SNR, or /(SNR+1) for v-prediction."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(base.noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if base.prediction_type == "v_prediction" else clipped / snr


def weighted_loss(cfg: TrainConfig, pred, noised, n_instance: int):
    """Per-sample MSE to ``noised.target`` times ``noised.weight``; with prior preservation the
    batch is [instance..., class...] and the class half is added with ``prior_loss_weight``.
    Returns (loss, instance_loss, prior_loss|None)."""
    return split_prior(cfg, per_sample_loss(pred, noised), n_instance)


def per_sample_loss(pred, noised):
    """One weighted MSE per sample of the batch (a micro-batch of several image sizes is
    denoised size by size and these are concatenated)."""
    import torch.nn.functional as F

    per_sample = F.mse_loss(pred.float(), noised.target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
    if noised.weight is not None:
        per_sample = per_sample * noised.weight.float()
    return per_sample


def split_prior(cfg: TrainConfig, per_sample, n_instance: int):
    instance = per_sample[:n_instance].mean()
    if per_sample.shape[0] == n_instance:
        return instance, instance, None
    prior = per_sample[n_instance:].mean()
    return instance + cfg.prior_loss_weight * prior, instance, prior
