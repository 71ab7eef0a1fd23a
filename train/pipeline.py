"""The base model: loaded once per host, reused by every task, left clean after each.

``load_base`` reads the components of a diffusers Stable Diffusion folder and freezes them.
Tasks attach a LoRA (``attach_lora``), train it, and remove it again (``detach_lora``), so a
task's result never depends on what ran before it on the same ``BaseModel``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.config import MIXED_PRECISION
from train.errors import ConfigError, TrainError

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
ADAPTER = "default"


@dataclass
class BaseModel:
    path: Path
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any          # DDPMScheduler of the pipeline (training noise, prediction type)
    device: Any                   # torch.device
    weight_dtype: Any             # dtype of the frozen weights (fp32, or fp16/bf16 with mixed precision)
    mixed_precision: str = "no"

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def identity(self) -> str:
        """A short content hash of the weights (not of paths or mtimes: a restarted job that
        downloads the same model again must find its cached class images)."""
        from train.fingerprint import base_model_identity

        return base_model_identity(self.path)["weights_sha256"][:16]

    def pipeline(self, scheduler: Any = None):
        """A StableDiffusionPipeline over the in-memory modules (nothing is reloaded)."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler or DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def load_base(model_dir, *, mixed_precision: str = "no", device: str | None = None) -> BaseModel:
    """Load the UNet, VAE, text encoder, tokenizer and noise scheduler of ``model_dir``, frozen."""
    import torch

    path = Path(model_dir)
    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision: {mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}")
    if not (path / "model_index.json").is_file():
        raise TrainError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if mixed_precision == "fp16" and dev.type != "cuda":
        raise ConfigError("mixed_precision (--mixed-precision): fp16 needs a CUDA GPU; use bf16 or no on CPU")
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    _check_components(path)

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(dev)
    vae.eval()
    text_encoder.eval()
    # Diffusers uses torch's scaled_dot_product_attention (AttnProcessor2_0) by default: make sure.
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return BaseModel(path=path, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                     noise_scheduler=noise_scheduler, device=dev, weight_dtype=dtype,
                     mixed_precision=mixed_precision)


def _check_components(path: Path) -> None:
    index = json.loads((path / "model_index.json").read_text())
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in index]
    if missing:
        raise TrainError(f"{path}/model_index.json: not a Stable Diffusion pipeline (missing {', '.join(missing)})")


def attach_lora(base: BaseModel, *, rank: int, alpha: float, train_text_encoder: bool,
                gradient_checkpointing: bool) -> list:
    """Add a fresh LoRA adapter to the UNet (and text encoder); return its trainable parameters.

    The LoRA init draws from torch's global RNG: the caller seeds it first.
    """
    import torch
    from peft import LoraConfig

    base.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=UNET_TARGETS), adapter_name=ADAPTER)
    modules = [base.unet]
    if train_text_encoder:
        base.text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                                 target_modules=TEXT_ENCODER_TARGETS), adapter_name=ADAPTER)
        base.text_encoder.train()
        modules.append(base.text_encoder)
    if gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if train_text_encoder:
            _call_first(base.text_encoder, "activation_checkpointing_enable", "gradient_checkpointing_enable")
    base.unet.train()
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:  # trainable LoRA weights stay fp32 under mixed precision
        p.data = p.data.to(torch.float32)
    return params


def detach_lora(base: BaseModel) -> None:
    """Remove every LoRA layer again, so ``base`` is exactly as ``load_base`` left it."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    for module in (base.unet, base.text_encoder):
        if getattr(module, "peft_config", None) is not None or getattr(module, "_hf_peft_config_loaded", False):
            recurse_remove_peft_layers(module)
            if hasattr(module, "peft_config"):
                del module.peft_config
            if hasattr(module, "_hf_peft_config_loaded"):
                module._hf_peft_config_loaded = False
    if base.unet.is_gradient_checkpointing:
        base.unet.disable_gradient_checkpointing()
    _call_first(base.text_encoder, "activation_checkpointing_disable", "gradient_checkpointing_disable")
    base.unet.requires_grad_(False)
    base.text_encoder.requires_grad_(False)
    base.unet.eval()
    base.text_encoder.eval()


def _call_first(module: Any, *names: str) -> None:
    """Call the first of ``names`` the module has (transformers renamed gradient checkpointing)."""
    for name in names:
        if hasattr(module, name):
            getattr(module, name)()
            return
