"""SDXL: one UNet with micro-conditioning, two CLIP text encoders (the second with projection).

As diffusers' ``train_dreambooth_lora_sdxl.py`` and kohya train it: the prompt embedding is
the penultimate hidden states of both encoders side by side, the pooled embedding is the
second encoder's projection, and ``add_time_ids`` are each image's original size, crop offset
and target size. The DDPM objective (ε/v, min-SNR, noise offset) is SD's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import ImageInfo, Noised
from train.families.sd import BF16, DPM_STEPS, ONETRAINER_RANK, DenoisingFamily

SDXL_README = "diffusers examples/dreambooth/README_sdxl.md (train_dreambooth_lora_sdxl.py)"


class StableDiffusionXL(DenoisingFamily):
    name = "sdxl"
    title = "Stable Diffusion XL"
    class_names = ("StableDiffusionXLPipeline",)
    pipeline_class = "StableDiffusionXLPipeline"
    denoiser = "unet"
    text_encoders = ("text_encoder", "text_encoder_2")
    required = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    # SDXL (2.6B UNet, bf16) at 1024 px: with gradient checkpointing under 16 GB (README_sdxl.md),
    # so it fits the 24 GB target with room; no quantization.
    recipe = {"mixed_precision": "bf16", "rank": 16, "optimizer": "adamw", "learning_rate": 1e-4,
              "lr_scheduler": "constant", "max_train_steps": 1000, "resolution": 1024, "train_text_encoder": False,
              "gradient_checkpointing": True, "preview_every": 250, "preview_inference_steps": 25,
              "preview_guidance_scale": 5.0}
    recipe_sources = {
        "mixed_precision": BF16,
        "rank": ONETRAINER_RANK,
        "optimizer": f"{SDXL_README}: AdamW (the script's default)",
        "learning_rate": f"{SDXL_README}: --learning_rate=1e-4",
        "lr_scheduler": f"{SDXL_README}: --lr_scheduler=constant",
        "max_train_steps": (f"{SDXL_README}: --max_train_steps=500 with --gradient_accumulation_steps=4 (2000 "
                            "images); here 1000 one-image steps, half the reference's images per user"),
        "resolution": f"{SDXL_README}: --resolution=1024 (SDXL's native size)",
        "train_text_encoder": f"{SDXL_README}: the text encoders' LoRA is optional (--train_text_encoder)",
        "gradient_checkpointing": (f"{SDXL_README}: --gradient_checkpointing (with 8-bit Adam) trains SDXL LoRAs in "
                                   "less than 16 GB"),
        "preview_every": "ai-toolkit's sample_every: 250 (config/examples, ui jobConfig)",
        "preview_inference_steps": DPM_STEPS,
        "preview_guidance_scale": "StableDiffusionXLPipeline's default guidance_scale=5.0",
    }

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        import torch
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        modules = self._load_unet_vae(path, device, dtype)
        if dtype == torch.float16 and modules["vae"].config.get("force_upcast", True):
            # The SDXL VAE overflows in fp16 (NaN latents); diffusers keeps it in fp32 too.
            modules["vae"] = modules["vae"].to(torch.float32)
        modules["text_encoder"] = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
        modules["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            path, subfolder="text_encoder_2", torch_dtype=dtype)
        modules["tokenizer"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        modules["tokenizer_2"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")
        return modules

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        import torch

        hidden, pooled = [], None
        for tok, encoder in ((base.tokenizer, base.text_encoder), (base.tokenizer_2, base.text_encoder_2)):
            ids = tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(base.device)
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]                       # the last encoder's (text_encoder_2) projection wins
            hidden.append(out.hidden_states[-2])  # penultimate layer, as SDXL was trained
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        hidden = prompts["hidden"]
        added = {"text_embeds": prompts["pooled"], "time_ids": time_ids(images, hidden.device, hidden.dtype)}
        return base.unet(noised.model_input, noised.timesteps, hidden, added_cond_kwargs=added).sample

    def pipeline(self, base, scheduler: Any = None):
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
            tokenizer=base.tokenizer, tokenizer_2=base.tokenizer_2, unet=base.unet,
            scheduler=scheduler or self.preview_scheduler(base), add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_kwargs(self) -> dict[str, Any]:
        return {"add_watermarker": False}


def time_ids(images: Sequence[ImageInfo], device, dtype):
    """SDXL's micro-conditioning, one row per image: original (h, w), crop (top, left), target (h, w)."""
    import torch

    rows = [list(i.original_size) + list(i.crop_top_left) + list(i.target_size) for i in images]
    return torch.tensor(rows, device=device, dtype=dtype)
