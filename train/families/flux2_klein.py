"""FLUX.2 Klein: the Flux.2 transformer and VAE with a Qwen3 text encoder (Klein 4B: Apache-2.0).

Everything flow-matching comes from :class:`train.families.flux.FlowMatchingFamily`; what is
Klein's own is what diffusers' ``train_dreambooth_lora_flux2_klein.py`` does differently from
FLUX.1: prompts are Qwen3's hidden states 9, 18 and 27 stacked (the pipeline's own encoder),
latents are the VAE posterior's mode in 2x2 patches normalised by the VAE's batch-norm
statistics, positions are 4-axis ids, and there is no pooled prompt and no guidance embedding
(Klein has no guidance embedding). LoRA targets default to the reference's: the double blocks'
attention and the single blocks' fused projections. Qwen3 stays frozen and spends the training
steps in CPU memory.

Two published variants share this architecture: the Base checkpoints (FLUX.2-klein-base-4B/9B,
undistilled: ~50 steps with classifier-free guidance) and the step-distilled ones
(FLUX.2-klein-4B/9B: 4 steps, no CFG). Their folders differ only in ``model_index.json``'s
``is_distilled`` (true on the distilled repos; false or absent on Base, which is how
``Flux2KleinPipeline`` itself reads it). Both train; Base is the one to train LoRAs on
(``variant_warning``), and previews follow the variant's recipe. The 4B models are Apache-2.0,
the 9B ones FLUX Non-Commercial.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import ImageInfo, Noised
from train.families.flux import FLOW_SOURCES, PROMPT_TOKENS, FlowMatchingFamily

log = logging.getLogger("train")
KLEIN_README = "diffusers examples/dreambooth/README_flux2.md, FLUX 2 [klein] 4B example"
MUSUBI_KLEIN = "musubi-tuner docs/flux_2.md (model versions table)"
# What a user should know before training on the distilled checkpoints (logged per task, in the manifest).
DISTILLED_WARNING = (
    "this FLUX.2 klein folder is the step-distilled model (model_index.json is_distilled: true), made for 4-step "
    "sampling without guidance; a LoRA trained on it directly loses that few-step behaviour. Train LoRAs on the "
    "Base checkpoint instead: black-forest-labs/FLUX.2-klein-base-4B (Apache-2.0; the 9B ones are FLUX "
    "Non-Commercial), as Black Forest Labs recommends for fine-tuning and LoRA training (black-forest-labs/flux2 "
    "README, 'Which model should I use?'; musubi-tuner docs/flux_2.md)")
# Qwen3-8B's hidden size x 3 stacked layers: the 9B models' text width (4B: Qwen3-4B, 3 x 2560).
KLEIN_9B_TEXT_WIDTH = 12288

# diffusers' train_dreambooth_lora_flux2_klein.py default; the single blocks' output projection
# is named per block there ("single_transformer_blocks.{i}.attn.to_out"): a suffix match on
# "to_out" would also catch the double blocks' to_out ModuleList, so the same is said as a
# path that peft matches only inside single blocks.
KLEIN_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj")
KLEIN_SINGLE_OUT = "single_transformer_blocks.{i}.attn.to_out"


class Flux2Klein(FlowMatchingFamily):
    name = "flux2-klein"
    title = "FLUX.2 Klein"
    class_names = ("Flux2KleinPipeline",)
    pipeline_class = "Flux2KleinPipeline"
    text_encoders = ()                      # Qwen3 is not trained (as in the reference)
    required = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    denoiser_targets = KLEIN_TARGETS
    quantized_components = ("transformer",)
    offloaded_components = ("text_encoder",)
    kohya_prefixes = {"transformer": "diffusion_model"}
    # Klein 4B: the transformer is 8 GB in bf16 and Qwen3-4B another 8 GB, parked in CPU memory
    # while the steps run; unquantized with checkpointing it fits the 24 GB target.
    recipe = {"mixed_precision": "bf16", "rank": 32, "optimizer": "adamw8bit", "learning_rate": 1e-4,
              "lr_scheduler": "constant", "max_train_steps": 1000, "resolution": 1024, "gradient_checkpointing": True,
              "base_quantization": "none", "weighting_scheme": "logit_normal", "preview_every": 250}
    variant_recipes = {
        "base": {"preview_inference_steps": 50, "preview_guidance_scale": 4.0},
        "distilled": {"preview_inference_steps": 4, "preview_guidance_scale": 1.0},
    }
    recipe_sources = {
        **FLOW_SOURCES,
        "rank": ("ai-toolkit ui/src/app/jobs/new (FLUX.2-klein-base-4B with the default network: linear 32, "
                 "linear_alpha 32); musubi-tuner docs/flux_2.md: --network_dim 32"),
        "optimizer": f"{KLEIN_README}: --optimizer=adamW --use_8bit_adam; ai-toolkit and musubi-tuner: adamw8bit",
        "learning_rate": f"{KLEIN_README}: --learning_rate=1e-4 (ai-toolkit, musubi-tuner: 1e-4)",
        "lr_scheduler": f"{KLEIN_README}: --lr_scheduler=constant",
        "max_train_steps": (f"{KLEIN_README}: 500 steps x gradient_accumulation 4; ai-toolkit's UI default 3000; "
                            "here 1000 one-image steps per user"),
        "resolution": f"{KLEIN_README}: --resolution=1024",
        "gradient_checkpointing": f"{KLEIN_README}: --gradient_checkpointing",
        "base_quantization": ("SimpleTuner documentation/quickstart/FLUX2.md: klein-4b needs ~12 GB in bf16 (int8 "
                              "~8 GB); BFL: a klein-base-4B LoRA fits 24 GB (field notes) - no quantization needed"),
        "weighting_scheme": ("OneTrainer training_presets/#flux2 LoRA 16GB.json: timestep_distribution LOGIT_NORMAL "
                             "(ai-toolkit's klein default 'weighted' is also mid-heavy) - mean 0, std 1"),
        "base:preview_inference_steps": (f"{MUSUBI_KLEIN}: klein-base samples with 50 steps; Flux2KleinPipeline's "
                                         "docstring example (klein-base): num_inference_steps=50"),
        "base:preview_guidance_scale": (f"{MUSUBI_KLEIN}: klein-base guidance 4.0 (classifier-free); "
                                        "Flux2KleinPipeline's example: guidance_scale=4.0"),
        "distilled:preview_inference_steps": f"{MUSUBI_KLEIN}: klein-4b (distilled) samples with 4 steps",
        "distilled:preview_guidance_scale": (f"{MUSUBI_KLEIN}: klein-4b guidance 1.0 (no CFG: Flux2KleinPipeline "
                                             "ignores guidance on distilled models)"),
    }

    def detect_variant(self, path: Path, index: Mapping[str, Any]) -> str:
        """``is_distilled`` in model_index.json: true on FLUX.2-klein-4B/9B; false or absent on the
        Base repos (Flux2KleinPipeline's own default, so diffusers samples such a folder with CFG too)."""
        return "distilled" if index.get("is_distilled") is True else "base"

    def variant_warning(self, variant: str) -> str | None:
        return DISTILLED_WARNING if variant == "distilled" else None

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        transformer = Flux2Transformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        if transformer.config.joint_attention_dim == KLEIN_9B_TEXT_WIDTH:
            log.warning("%s: a FLUX.2 klein 9B model, under the FLUX Non-Commercial License (only the 4B models are "
                        "Apache-2.0): check your use is allowed", path)
        # The reference's default names every single block; a host trains one base (loaded once).
        self._num_single_layers = transformer.config.num_single_layers
        return self._parked({
            "transformer": transformer,
            "vae": AutoencoderKLFlux2.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
            "text_encoder": Qwen3ForCausalLM.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype),
            "tokenizer": AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
            **self._load_scheduler(path),
        }, device)

    def lora_targets(self, cfg) -> dict[str, tuple[str, ...]]:
        if cfg.lora_targets:
            return super().lora_targets(cfg)
        n = self._num_single_layers
        return {self.denoiser: KLEIN_TARGETS + tuple(KLEIN_SINGLE_OUT.format(i=i) for i in range(n))}

    _num_single_layers = 24  # Klein 9B's count, until a base is loaded (4B has 20)

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        from diffusers import Flux2KleinPipeline

        from train.families.flux import _onloaded

        with _onloaded(base, self.offloaded_components, park=False):
            hidden = Flux2KleinPipeline._get_qwen3_prompt_embeds(
                base.text_encoder, base.tokenizer, list(captions), dtype=base.weight_dtype, device=base.device,
                max_sequence_length=PROMPT_TOKENS)
        return {"hidden": hidden}

    def sample_latents(self, base, mean, std, rng):
        """The posterior's mode (as the reference), patchified and batch-norm normalised."""
        import torch
        from diffusers import Flux2KleinPipeline

        vae = base.vae
        bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(mean.device, mean.dtype)
        bn_std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(mean.device,
                                                                                                    mean.dtype)
        return (Flux2KleinPipeline._patchify_latents(mean) - bn_mean) / bn_std

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        from diffusers import Flux2KleinPipeline as P

        from train.flow import guidance_vector

        x = noised.model_input
        transformer = base.transformer
        packed = P._pack_latents(x)
        img_ids = P._prepare_latent_ids(x).to(x.device)
        hidden = prompts["hidden"]
        txt_ids = P._prepare_text_ids(hidden).to(x.device)
        guidance = guidance_vector(transformer.config.guidance_embeds, noised.extra["guidance_scale"],
                                   x.shape[0], x.device)
        pred = transformer(hidden_states=packed, timestep=noised.timesteps / 1000, guidance=guidance,
                           encoder_hidden_states=hidden, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return P._unpack_latents_with_ids(pred[:, :packed.size(1)], img_ids, x.shape[2], x.shape[3])

    def bfl_state(self, pipe, train_text_encoder: bool) -> dict[str, Any]:
        from train.families.bfl_keys import comfy_klein_state

        return comfy_klein_state(pipe.transformer)

    def pipeline(self, base, scheduler: Any = None):
        from diffusers import Flux2KleinPipeline

        # Base samples with classifier-free guidance, the distilled model without (the pipeline's switch).
        is_distilled = base.variant == "distilled"
        pipe = Flux2KleinPipeline(scheduler=scheduler or self.preview_scheduler(base), vae=base.vae,
                                  text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                  transformer=base.transformer, is_distilled=is_distilled)
        pipe.set_progress_bar_config(disable=True)
        return pipe
