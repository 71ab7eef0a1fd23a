"""Accelerator, optimizer and learning-rate schedule of one task."""

from __future__ import annotations

from train.config import TrainConfig
from train.errors import ConfigError
from train.pipeline import BaseModel


def make_accelerator(base: BaseModel, cfg: TrainConfig):
    """An Accelerator for autocast, gradient accumulation and (fp16) loss scaling.

    Accelerate keeps process-wide state: the mixed precision is fixed by the first
    Accelerator of a process, which is why it belongs to the base model (loaded once).
    """
    from accelerate import Accelerator

    if cfg.mixed_precision != base.mixed_precision:
        raise ConfigError(f"mixed_precision (--mixed-precision): {cfg.mixed_precision!r} differs from the base "
                          f"model's {base.mixed_precision!r}; set it for the whole job, not per task")
    cpu = base.device.type == "cpu"
    return Accelerator(mixed_precision=base.mixed_precision, cpu=cpu,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps)


def make_optimizer(cfg: TrainConfig, params: list):
    if cfg.optimizer == "adamw":
        import torch

        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ConfigError(f"optimizer (--optimizer): adamw8bit needs bitsandbytes ({exc})") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise ConfigError("optimizer (--optimizer): prodigy needs the prodigyopt package; "
                          "use adamw or adamw8bit, or `pip install prodigyopt`") from None
    return Prodigy(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay, safeguard_warmup=True,
                   use_bias_correction=True)


def make_lr_scheduler(cfg: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=cfg.max_train_steps)
