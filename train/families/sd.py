"""Stable Diffusion 1.x/2.x: one UNet, one CLIP text encoder, ε- or v-prediction (DDPM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import Family, ImageInfo, Noised, vae_scale


class DenoisingFamily(Family):
    """What SD and SDXL share: a DDPM noise schedule, ε/v targets, min-SNR and noise offset."""

    denoiser_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def size_multiple(self, base) -> int:
        # The UNet halves the latents once per down block but the last: SD 8x8 = 64 px, SDXL 8x4 = 32.
        return vae_scale(base) * 2 ** (len(base.unet.config.block_out_channels) - 1)

    def noise(self, base, cfg, latents, rng) -> Noised:
        from train.objective import add_noise, snr_weights, target_for

        noisy, noise, timesteps = add_noise(base, cfg, latents, rng)
        weight = snr_weights(base, timesteps, cfg.snr_gamma).float() if cfg.snr_gamma is not None else None
        return Noised(model_input=noisy, target=target_for(base, latents, noise, timesteps), timesteps=timesteps,
                      weight=weight)

    def _load_unet_vae(self, path: Path, device, dtype) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        # Diffusers uses torch's scaled_dot_product_attention (AttnProcessor2_0) by default: make sure.
        unet.set_attn_processor(AttnProcessor2_0())
        # Training noise always comes from a DDPM schedule with the pipeline's betas and
        # prediction type, whatever sampler the folder ships (SDXL ships Euler).
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        return {"unet": unet, "vae": vae, "noise_scheduler": noise_scheduler}


# Where recipe numbers come from (docs/families.md has the table). Snapshots: diffusers 58eb52c,
# OneTrainer 23df383, ai-toolkit 27a03a9 (the field notes' list).
BF16 = ("bf16 on a GPU that has it, fp16 on an older GPU, fp32 on a CPU (train/recipes.py Device); "
        "every reference README trains in 16-bit mixed precision")
DIFFUSERS_LORA_README = "diffusers examples/dreambooth/README.md, LoRA example (train_dreambooth_lora.py)"
DPM_STEPS = ("25 DPM-Solver steps: diffusers docs/source/en/stable_diffusion.md, DPMSolverMultistepScheduler "
             "'only requires ~20-25 steps'")
ONETRAINER_RANK = ("OneTrainer's LoRA default lora_rank=16 (modules/util/config/TrainConfig.py); alpha = rank, "
                   "scale 1 (diffusers README_flux.md: 'a common starting point')")


class StableDiffusion(DenoisingFamily):
    name = "sd"
    title = "Stable Diffusion 1.x/2.x"
    class_names = ("StableDiffusionPipeline",)
    pipeline_class = "StableDiffusionPipeline"
    denoiser = "unet"
    text_encoders = ("text_encoder",)
    required = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te"}
    # SD 1.5 at 512 px (0.9B UNet, bf16) trains in well under 16 GB: no checkpointing, no quantization.
    recipe = {"mixed_precision": "bf16", "rank": 16, "optimizer": "adamw", "learning_rate": 1e-4,
              "lr_scheduler": "constant", "max_train_steps": 500, "resolution": 512, "train_text_encoder": False,
              "gradient_checkpointing": False, "preview_inference_steps": 25, "preview_guidance_scale": 7.5}
    recipe_sources = {
        "mixed_precision": BF16,
        "rank": ONETRAINER_RANK,
        "optimizer": f"{DIFFUSERS_LORA_README}: AdamW (the script's default)",
        "learning_rate": f"{DIFFUSERS_LORA_README}: --learning_rate=1e-4",
        "lr_scheduler": f"{DIFFUSERS_LORA_README}: --lr_scheduler=constant",
        "max_train_steps": f"{DIFFUSERS_LORA_README}: --max_train_steps=500",
        "resolution": f"{DIFFUSERS_LORA_README}: --resolution=512 (SD 1.5's native size)",
        "train_text_encoder": f"{DIFFUSERS_LORA_README}: the text encoder LoRA is optional (--train_text_encoder)",
        "gradient_checkpointing": ("off: diffusers README.md turns it on (with 8-bit Adam) to fit full DreamBooth, every "
                                   "UNet weight trained, in 16 GB; a LoRA's trained weights and optimizer state are MBs"),
        "preview_inference_steps": DPM_STEPS,
        "preview_guidance_scale": "StableDiffusionPipeline's default guidance_scale=7.5",
    }

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        from transformers import CLIPTextModel, CLIPTokenizer

        modules = self._load_unet_vae(path, device, dtype)
        modules["text_encoder"] = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
        modules["tokenizer"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        return modules

    def load_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        tok = base.tokenizer
        ids = tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(base.device)
        return {"hidden": base.text_encoder(ids)[0]}

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        return base.unet(noised.model_input, noised.timesteps, prompts["hidden"]).sample

    def pipeline(self, base, scheduler: Any = None):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
            scheduler=scheduler or self.preview_scheduler(base),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_lora(self, pipe, model_dir: Path, *, save_dtype: str, train_text_encoder: bool, parts=None) -> Path:
        # The SD file goes through train.export.lora, which knows the older readers' quirks.
        from train.export import lora

        return lora.save_diffusers_lora(parts, model_dir, save_dtype)
