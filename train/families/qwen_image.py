"""Qwen-Image (Qwen, Apache-2.0): a 20B MMDiT over a video-style VAE, Qwen2.5-VL-7B prompts.

As diffusers' ``train_dreambooth_lora_qwen_image.py`` trains it (the flow-matching objective is
:class:`train.families.flux.FlowMatchingFamily`'s): a sample of the VAE posterior of each image
(one frame: (B, C, 1, H, W)), normalised by the VAE's per-channel ``latents_mean`` /
``latents_std``; sigmas drawn by the weighting scheme from the base's scheduler table (loaded,
as the reference does, with ``shift=3.0``, which the published scheduler's dynamic shifting
leaves unused in training); latents packed into 2x2 patches with their ``img_shapes``; the
prompt is Qwen2.5-VL's last hidden state after the pipeline's system template, with its mask;
the timestep is sigma; the prediction is the velocity ``noise - latents``. LoRA goes on the
attention projections ``to_q/k/v``, ``to_out.0`` (the reference's default).

The 7B text encoder (16.6 GB in bf16) encodes a task's prompts once and waits in CPU memory
while the transformer trains. ``base_quantization`` nf4/int8 quantizes, once per host, the 20B
transformer (41 GB in bf16, ~11 GB in NF4) and, as FLUX.1's T5, the text encoder, which then
stays on the GPU (~5 GB in NF4): bringing it in unquantized to encode would alone put the
transformer and it over 24 GB. That is what fits a 24 GB GPU. Previews use the pipeline's true
classifier-free guidance (``true_cfg_scale`` with a blank negative prompt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import ImageInfo, Noised, vae_scale
from train.families.flux import PROMPT_TOKENS, FlowMatchingFamily, _onloaded

# diffusers' train_dreambooth_lora_qwen_image.py default (--lora_layers unset).
QWEN_IMAGE_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
# Qwen-Image's model card samples with true_cfg_scale=4.0 and negative_prompt=" ".
NEGATIVE_PROMPT = " "


class QwenImage(FlowMatchingFamily):
    name = "qwen-image"
    title = "Qwen-Image"
    class_names = ("QwenImagePipeline",)
    pipeline_class = "QwenImagePipeline"
    text_encoders = ()                       # Qwen2.5-VL is not trained (as in the reference)
    required = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    denoiser_targets = QWEN_IMAGE_TARGETS
    quantized_components = ("transformer", "text_encoder")
    offloaded_components = ("text_encoder",)   # parked in CPU memory when not quantized
    kohya_prefixes = {"transformer": "diffusion_model"}

    recipe = {
        "mixed_precision": "bf16", "rank": 16, "lora_alpha": 16.0, "optimizer": "adamw8bit",
        "learning_rate": 1e-4, "lr_scheduler": "constant", "lr_warmup_steps": 0, "max_train_steps": 500,
        "gradient_accumulation_steps": 4, "resolution": 1024, "weighting_scheme": "none",
        "gradient_checkpointing": True, "base_quantization": "nf4",
        "preview_inference_steps": 25, "preview_guidance_scale": 4.0,
    }
    variant_recipes: Mapping[str, Mapping[str, Any]] = {}
    recipe_sources = {
        "mixed_precision": "diffusers examples/dreambooth/README_qwen.md (--mixed_precision=bf16)",
        "rank": "ai-toolkit config/examples/train_lora_qwen_image_24gb.yaml (linear 16)",
        "lora_alpha": "ai-toolkit train_lora_qwen_image_24gb.yaml (linear_alpha 16)",
        "optimizer": "diffusers README_qwen.md (--use_8bit_adam); ai-toolkit (adamw8bit)",
        "learning_rate": "ai-toolkit train_lora_qwen_image_24gb.yaml (lr 1e-4; README_qwen.md uses 2e-4 at rank 4)",
        "lr_scheduler": "diffusers README_qwen.md (--lr_scheduler=constant)",
        "lr_warmup_steps": "diffusers README_qwen.md (--lr_warmup_steps=0)",
        "max_train_steps": "diffusers README_qwen.md (--max_train_steps=500)",
        "gradient_accumulation_steps": "diffusers README_qwen.md (--gradient_accumulation_steps=4)",
        "resolution": "diffusers README_qwen.md (--resolution=1024)",
        "weighting_scheme": "train_dreambooth_lora_qwen_image.py default (none)",
        "gradient_checkpointing": "ai-toolkit train_lora_qwen_image_24gb.yaml ('need the on')",
        "base_quantization": "diffusers README_qwen.md bitsandbytes example (nf4): the 20B transformer is 41 GB "
                             "in bf16, ~11 GB in NF4 (and Qwen2.5-VL ~5 GB)",
        "preview_inference_steps": "ai-toolkit train_lora_qwen_image_24gb.yaml (sample_steps 25)",
        "preview_guidance_scale": "QwenImagePipeline default true_cfg_scale=4.0 (Qwen-Image model card)",
    }

    def check_config(self, cfg, source: str = "config") -> None:
        """Also: Qwen-Image's sampler stretches its schedule to ``shift_terminal``, which divides by
        zero in a 1-step schedule (a black preview), so sampling takes at least 2 steps."""
        from train.config import flag_name
        from train.errors import ConfigError

        super().check_config(cfg, source)
        for name in ("preview_inference_steps", "class_inference_steps"):
            if getattr(cfg, name) < 2:
                raise ConfigError(f"{source}: {name} ({flag_name(name)}): Qwen-Image samples with at least 2 steps "
                                  f"(its scheduler's shift_terminal is undefined for 1), got {getattr(cfg, name)}")

    # --- loading -----------------------------------------------------------------------------

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from train.flow import SigmaTable

        # The reference loads its training scheduler with shift=3.0 (a static shift, used only
        # where the folder's scheduler has no dynamic shifting): the same table here.
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", shift=3.0)
        return self._parked({
            "transformer": QwenImageTransformer2DModel.from_pretrained(path, subfolder="transformer",
                                                                       torch_dtype=dtype),
            "vae": AutoencoderKLQwenImage.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
            "text_encoder": Qwen2_5_VLForConditionalGeneration.from_pretrained(path, subfolder="text_encoder",
                                                                               torch_dtype=dtype),
            "tokenizer": AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
            "noise_scheduler": scheduler,
            "sigma_table": SigmaTable.from_scheduler_config(scheduler.config),
        }, device)

    # --- prompts and latents -------------------------------------------------------------------

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        """The pipeline's own encoder: ``hidden`` (B, L, D) and ``mask`` (B, L) of each prompt."""
        import torch
        from diffusers import QwenImagePipeline

        with _onloaded(base, self.offloaded_components, park=False):
            text = QwenImagePipeline(scheduler=None, vae=None, text_encoder=base.text_encoder,
                                     tokenizer=base.tokenizer, transformer=None)
            hidden, mask = text.encode_prompt(prompt=list(captions), device=base.device,
                                              max_sequence_length=PROMPT_TOKENS)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return {"hidden": hidden, "mask": mask}

    def encode_pixels(self, base, pixels) -> tuple[Any, Any]:
        """Posterior (mean, std) of each image as a one-frame video, as (B, C, H, W). One image at a
        time: the video VAE's 3D convolutions at 1024 px are the largest activations of a task."""
        import torch

        with torch.no_grad():
            dists = [base.vae.encode(p[None, :, None].to(base.device, base.vae.dtype)).latent_dist for p in pixels]
        return torch.cat([d.mean[:, :, 0] for d in dists]), torch.cat([d.std[:, :, 0] for d in dists])

    def sample_latents(self, base, mean, std, rng):
        """A posterior sample (the reference's ``latent_dist.sample()``), per-channel normalised."""
        import torch

        eps = torch.randn(mean.shape, generator=rng, dtype=torch.float32).to(mean.device, mean.dtype)
        cfg = base.vae.config
        shift = torch.tensor(cfg.latents_mean, device=mean.device, dtype=mean.dtype).view(1, -1, 1, 1)
        scale = torch.tensor(cfg.latents_std, device=mean.device, dtype=mean.dtype).view(1, -1, 1, 1)
        return (mean + std * eps - shift) / scale

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        from diffusers import QwenImagePipeline as P

        x = noised.model_input
        b, c, h, w = x.shape
        mask = prompts["mask"]
        # As the reference batches prompts: no mask when no prompt of the batch is padded.
        mask = None if bool(mask.bool().all()) else mask
        scale = vae_scale(base)
        pred = base.transformer(hidden_states=P._pack_latents(x, b, c, h, w), encoder_hidden_states=prompts["hidden"],
                                encoder_hidden_states_mask=mask, timestep=noised.timesteps / 1000,
                                img_shapes=[(1, h // 2, w // 2)] * b, return_dict=False)[0]
        return P._unpack_latents(pred, h * scale, w * scale, scale)[:, :, 0]

    # --- sampling ------------------------------------------------------------------------------

    def sampling_kwargs(self, base, guidance_scale: float) -> dict[str, Any]:
        # QwenImagePipeline's guidance_scale is for guidance-distilled transformers only; CFG is
        # true_cfg_scale, which needs a negative prompt (and is off at 1 or below).
        if guidance_scale > 1:
            return {"true_cfg_scale": guidance_scale, "negative_prompt": NEGATIVE_PROMPT}
        return {"true_cfg_scale": 1.0}

    def pipeline(self, base, scheduler: Any = None):
        from diffusers import QwenImagePipeline

        pipe = QwenImagePipeline(scheduler=scheduler or self.preview_scheduler(base), vae=base.vae,
                                 text_encoder=base.text_encoder, tokenizer=base.tokenizer, transformer=base.transformer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def preview_scheduler(self, base):
        """The folder's own sampler (the training copy was loaded with the reference's shift)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_pretrained(base.path, subfolder="scheduler")

    # --- files ---------------------------------------------------------------------------------

    def bfl_state(self, pipe, train_text_encoder: bool) -> dict[str, Any]:
        """The ComfyUI copy: diffusers' layer names (which ComfyUI's Qwen-Image model uses) under
        ``diffusion_model.``, the scale folded into lora_B."""
        from train.families.bfl_keys import comfy_diffusers_names_state

        return comfy_diffusers_names_state(pipe.transformer)
