"""Z-Image (Tongyi-MAI, Apache-2.0): a 6B single-stream DiT over FLUX.1's VAE, Qwen3-4B prompts.

As diffusers' ``train_dreambooth_lora_z_image.py`` trains it (everything flow-matching is
:class:`train.families.flux.FlowMatchingFamily`'s): latents are the VAE posterior's mode,
shifted and scaled by the VAE's factors; sigmas come from the base's own (statically shifted)
FlowMatchEulerDiscreteScheduler table, drawn by the weighting scheme; the transformer takes a
list of (C, 1, H, W) latents, the timestep as ``(1000 - t) / 1000`` and each prompt's unpadded
Qwen3 hidden states (the second-to-last layer, through the chat template), and its output is
negated into the velocity ``noise - latents`` the loss compares with. LoRA goes on the
attention projections ``to_q/k/v``, ``to_out.0`` of every block (the reference's default);
Qwen3 stays frozen and spends the steps in CPU memory.

Two published variants share the architecture: **Base** (Z-Image; classifier-free guidance,
~30-50 steps) and **Turbo** (Z-Image-Turbo; step- and CFG-distilled: 8 steps, no CFG). The
reference trains either the same way; a LoRA trained naively on Turbo slowly loses Turbo's
few-step behaviour (peers train Base, or Turbo through a de-distillation adapter), so on a
Turbo base training runs as the reference's does with a warning that says so, and previews
and class images sample as Turbo does (no CFG). ``detect_variant`` tells them apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import ImageInfo, Noised
from train.families.flux import PROMPT_TOKENS, FlowMatchingFamily, _onloaded

# diffusers' train_dreambooth_lora_z_image.py default (--lora_layers unset).
Z_IMAGE_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TURBO_WARNING = ("{path}: a Z-Image-Turbo base (step- and CFG-distilled). It trains as diffusers' "
                 "train_dreambooth_lora_z_image.py trains it, but a LoRA trained directly on Turbo erodes its "
                 "8-step, no-CFG sampling the longer it trains; for LoRAs prefer the Z-Image (Base) checkpoint "
                 "(the LoRA then also applies over Turbo), or keep Turbo runs short")
# A model card's own usage example loads the card's repository: the first one it loads says which.
CARD_LOAD = re.compile(r"from_pretrained\(\s*[\"']([\w.-]+/Z-Image[\w.-]*)[\"']", re.IGNORECASE)
CARD_TITLE = re.compile(r"^\s*(?:#|<h1[^>]*>)\s*(.+?)\s*(?:</h1>)?\s*$", re.MULTILINE)


class ZImage(FlowMatchingFamily):
    name = "z-image"
    title = "Z-Image"
    class_names = ("ZImagePipeline",)
    pipeline_class = "ZImagePipeline"
    text_encoders = ()                       # Qwen3 is not trained (as in the reference)
    required = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    denoiser_targets = Z_IMAGE_TARGETS
    quantized_components = ("transformer",)
    offloaded_components = ("text_encoder",)
    kohya_prefixes = {"transformer": "diffusion_model"}
    variants = ("base", "turbo")

    # Defaults a task gets when it sets nothing (resolved by TrainConfig; sources in recipe_sources).
    recipe = {
        "mixed_precision": "bf16", "rank": 16, "lora_alpha": 16.0, "optimizer": "adamw8bit",
        "learning_rate": 1e-4, "lr_scheduler": "constant", "lr_warmup_steps": 100, "max_train_steps": 500,
        "gradient_accumulation_steps": 4, "resolution": 1024, "weighting_scheme": "none",
        "gradient_checkpointing": True, "base_quantization": "none",
        "preview_inference_steps": 30, "preview_guidance_scale": 4.0,
    }
    variant_recipes = {"turbo": {"preview_inference_steps": 8, "preview_guidance_scale": 0.0,
                                 "class_inference_steps": 8}}
    recipe_sources = {
        "mixed_precision": "diffusers examples/dreambooth/README_z_image.md (--mixed_precision=bf16)",
        "rank": "SimpleTuner Z-Image quickstart (rank-16 LoRA); the diffusers script's default is 4",
        "lora_alpha": "alpha = rank (diffusers README_z_image.md: 'a common starting point')",
        "optimizer": "diffusers README_z_image.md (--optimizer=adamW --use_8bit_adam)",
        "learning_rate": "diffusers README_z_image.md (--learning_rate=1e-4)",
        "lr_scheduler": "diffusers README_z_image.md (--lr_scheduler=constant)",
        "lr_warmup_steps": "diffusers README_z_image.md (--lr_warmup_steps=100)",
        "max_train_steps": "diffusers README_z_image.md (--max_train_steps=500)",
        "gradient_accumulation_steps": "diffusers README_z_image.md (--gradient_accumulation_steps=4)",
        "resolution": "diffusers README_z_image.md (--resolution=1024)",
        "weighting_scheme": "train_dreambooth_lora_z_image.py default (none: uniform over the shifted table)",
        "gradient_checkpointing": "diffusers README_z_image.md (--gradient_checkpointing); fits 24 GB in bf16",
        "base_quantization": "none: the 6B transformer fits a 24 GB GPU in bf16 (Qwen3 parked in CPU memory)",
        "preview_inference_steps": "ai-toolkit config/examples/train_lora_zimage_base_32gb.yaml (sample_steps 30)",
        "preview_guidance_scale": "ai-toolkit train_lora_zimage_base_32gb.yaml (guidance_scale 4, 'Base uses CFG')",
        "turbo:preview_inference_steps": "diffusers Z-Image docs / ZImagePipeline example (8 steps for Turbo)",
        "turbo:preview_guidance_scale": "diffusers Z-Image docs (guidance_scale=0.0: Turbo is CFG-distilled)",
        "turbo:class_inference_steps": "as Turbo's previews (8 steps)",
    }

    def detect_variant(self, path: Path, index: Mapping[str, Any]) -> str:
        """``turbo`` or ``base``: ``model_index.json``'s ``_variant`` when set (diffusers ignores
        ``_`` keys); else the folder's model card (``README.md`` of a Hugging Face snapshot): the
        repository its usage example loads (``from_pretrained`` of ``Tongyi-MAI/Z-Image-Turbo``), or
        its title; else a folder name with "turbo" in it (the Hub cache's
        ``models--Tongyi-MAI--Z-Image-Turbo``); a folder that says nothing is Base."""
        stated = str(index.get("_variant", "")).strip().lower()
        if stated in self.variants:
            return stated
        try:
            card = (Path(path) / "README.md").read_text(errors="replace")[:50000]
        except OSError:
            card = ""
        body = card.split("\n---", 1)[-1] if card.startswith("---") else card  # past the YAML front matter
        said = CARD_LOAD.search(body) or CARD_TITLE.search(body)
        if said is not None:
            return "turbo" if "turbo" in said.group(1).lower() else "base"
        return "turbo" if any("turbo" in part.lower() for part in Path(path).resolve().parts[-4:]) else "base"

    def check_components(self, path: Path, index: Mapping[str, Any]) -> None:
        from train.errors import ConfigError

        super().check_components(path, index)
        stated = index.get("_variant")
        if stated is not None and str(stated).strip().lower() not in self.variants:
            raise ConfigError(f"{path}/model_index.json: _variant {stated!r} is not a Z-Image variant; "
                              f"valid: {', '.join(self.variants)}")

    # --- loading -----------------------------------------------------------------------------

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoTokenizer, Qwen3Model

        from train.families import read_model_index

        variant = self.detect_variant(path, read_model_index(path))
        if variant == "turbo":
            print("warning: " + TURBO_WARNING.format(path=path), flush=True)
        return self._parked({
            "transformer": ZImageTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype),
            "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
            "text_encoder": Qwen3Model.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype),
            "tokenizer": AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
            **self._load_scheduler(path),
        }, device)

    # --- prompts and latents -------------------------------------------------------------------

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        """The pipeline's own encoder (one tensor per prompt, padding removed), padded back into
        ``hidden`` (B, L, D) with ``mask`` (B, L) so the loop can cache and batch them."""
        from diffusers import ZImagePipeline

        with _onloaded(base, self.offloaded_components, park=False):
            text = ZImagePipeline(scheduler=None, vae=None, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                  transformer=None)
            embeds, _ = text.encode_prompt(prompt=list(captions), device=base.device,
                                           do_classifier_free_guidance=False, max_sequence_length=PROMPT_TOKENS)
        return padded(embeds)

    def sample_latents(self, base, mean, std, rng):
        """The posterior's mode (as the reference), shifted and scaled: no draw from ``rng``."""
        vae = base.vae.config
        return (mean - vae.shift_factor) * vae.scaling_factor

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        import torch

        x = noised.model_input
        hidden, mask = prompts["hidden"], prompts["mask"].bool()
        captions = [h[m] for h, m in zip(hidden, mask)]
        latents = list(x.unsqueeze(2).unbind(dim=0))            # (C, 1, H, W) per image
        t = (1000 - noised.timesteps.float()) / 1000             # Z-Image runs its clock backwards (fp32, as the reference)
        out = base.transformer(latents, t, captions, return_dict=False)[0]
        return -torch.stack(out, dim=0).squeeze(2)                # its output is -(noise - x)

    # --- sampling ------------------------------------------------------------------------------

    def sampling_kwargs(self, base, guidance_scale: float) -> dict[str, Any]:
        # Turbo is CFG-distilled: it samples without guidance (diffusers' docs: guidance_scale=0.0),
        # as Flux2KleinPipeline ignores guidance on distilled Klein.
        return {"guidance_scale": 0.0 if base.variant == "turbo" else guidance_scale}

    def pipeline(self, base, scheduler: Any = None):
        from diffusers import ZImagePipeline

        pipe = ZImagePipeline(scheduler=scheduler or self.preview_scheduler(base), vae=base.vae,
                              text_encoder=base.text_encoder, tokenizer=base.tokenizer, transformer=base.transformer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # --- files ---------------------------------------------------------------------------------

    def bfl_state(self, pipe, train_text_encoder: bool) -> dict[str, Any]:
        """The ComfyUI copy: diffusers' layer names under ``diffusion_model.`` (ComfyUI's Z-Image
        key map takes them and maps to_q/k/v into its fused qkv), the scale folded into lora_B."""
        from train.families.bfl_keys import comfy_diffusers_names_state

        return comfy_diffusers_names_state(pipe.transformer)


def padded(embeds: Sequence[Any]) -> dict[str, Any]:
    """Per-prompt (L_i, D) tensors as ``hidden`` (B, max L, D), zero-padded, and ``mask`` (B, max L)."""
    import torch

    n = max(int(e.shape[0]) for e in embeds)
    hidden = embeds[0].new_zeros(len(embeds), n, embeds[0].shape[-1])
    mask = torch.zeros(len(embeds), n, dtype=torch.bool, device=embeds[0].device)
    for i, e in enumerate(embeds):
        hidden[i, :e.shape[0]] = e
        mask[i, :e.shape[0]] = True
    return {"hidden": hidden, "mask": mask}
