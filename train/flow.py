"""The rectified-flow (flow matching) objective shared by the FLUX.1 and FLUX.2 Klein families.

As diffusers' Flux DreamBooth LoRA scripts and the SD3 paper do it: a sigma in (0, 1] is
drawn per sample by a weighting scheme, the model sees ``(1 - sigma) * x + sigma * noise`` at
timestep ``1000 * sigma`` and predicts the velocity ``noise - x``; schemes that sample sigmas
uniformly weight the loss instead. The density and the loss weights are diffusers' own
(``compute_density_for_timestep_sampling`` / ``compute_loss_weighting_for_sd3``); sigmas are
looked up in the training table of the base's ``FlowMatchEulerDiscreteScheduler`` (its
config-time timesteps, so a base with a static ``shift`` trains on shifted sigmas, as the
reference does). Every random draw comes from the caller's generator, seeded by (seed, step),
so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# none: uniform sigmas; logit_normal / mode: non-uniform sigmas; sigma_sqrt / cosmap: uniform
# sigmas, weighted loss (diffusers' names and meanings).
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class SigmaTable:
    """The training schedule of a flow-matching base: ``timesteps[i] == 1000 * sigmas[i]``."""

    timesteps: Any   # float tensor (N,), descending
    sigmas: Any      # float tensor (N,), descending, in (0, 1]
    num_train_timesteps: int

    @classmethod
    def from_scheduler_config(cls, config: Any) -> "SigmaTable":
        """From a fresh scheduler: a preview's ``set_timesteps`` must never change training."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        fresh = FlowMatchEulerDiscreteScheduler.from_config(config)
        n = fresh.config.num_train_timesteps
        return cls(timesteps=fresh.timesteps.float().clone(), sigmas=fresh.sigmas[:n].float().clone(),
                   num_train_timesteps=n)


def sample_sigmas(table: SigmaTable, batch: int, rng, *, scheme: str = "none", logit_mean: float = 0.0,
                  logit_std: float = 1.0, mode_scale: float = 1.29) -> tuple[Any, Any]:
    """(sigmas (B,), timesteps (B,)) drawn by ``scheme`` from ``rng`` (a CPU generator)."""
    import torch
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(weighting_scheme=scheme, batch_size=batch, logit_mean=logit_mean,
                                              logit_std=logit_std, mode_scale=mode_scale, generator=rng)
    # sigmoid(u) can round to 1.0 in fp32: clamp to the last index instead of indexing past it.
    idx = torch.clamp((u * table.num_train_timesteps).long(), 0, table.num_train_timesteps - 1)
    return table.sigmas[idx], table.timesteps[idx]


def noisy_input(x, noise, sigmas):
    """z_sigma = (1 - sigma) x + sigma noise, sigma broadcast over every non-batch dim."""
    s = _expand(sigmas, x)
    return (1.0 - s) * x + s * noise


def velocity_target(x, noise):
    """What a rectified-flow model predicts: d z / d sigma = noise - x."""
    return noise - x


def loss_weights(scheme: str, sigmas):
    """Per-sample loss weights for ``scheme`` (ones unless sigma_sqrt or cosmap)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas)


def flow_loss(pred, target, weights, *, n_instance: int, prior_loss_weight: float = 1.0):
    """Weighted MSE per sample, as the reference computes it; with prior preservation the batch
    is [instance..., class...] and the class half is added with ``prior_loss_weight``.
    Returns (loss, instance_loss, prior_loss | None)."""
    w = _expand(weights, pred).float()
    per_sample = (w * (pred.float() - target.float()) ** 2).reshape(pred.shape[0], -1).mean(dim=1)
    instance = per_sample[:n_instance].mean()
    if per_sample.shape[0] == n_instance:
        return instance, instance, None
    prior = per_sample[n_instance:].mean()
    return instance + prior_loss_weight * prior, instance, prior


def guidance_vector(guidance_embeds: bool, scale: float, batch: int, device):
    """The guidance input of a guidance-distilled transformer (FLUX.1-dev), else None."""
    import torch

    return torch.full((batch,), float(scale), device=device, dtype=torch.float32) if guidance_embeds else None


def _expand(values, like):
    v = values.to(like.device, like.dtype) if hasattr(values, "to") else values
    while v.ndim < like.ndim:
        v = v.unsqueeze(-1)
    return v
