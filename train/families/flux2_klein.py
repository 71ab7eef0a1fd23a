"""FLUX.2 Klein: the Flux.2 transformer and VAE with a Qwen3 text encoder (Klein 4B: Apache-2.0).

Everything flow-matching comes from :class:`train.families.flux.FlowMatchingFamily`; what is
Klein's own is what diffusers' ``train_dreambooth_lora_flux2_klein.py`` does differently from
FLUX.1: prompts are Qwen3's hidden states 9, 18 and 27 stacked (the pipeline's own encoder),
latents are the VAE posterior's mode in 2x2 patches normalised by the VAE's batch-norm
statistics, positions are 4-axis ids, and there is no pooled prompt and no guidance embedding
(Klein 4B is step-distilled). LoRA targets default to the reference's: the double blocks'
attention and the single blocks' fused projections. Qwen3 stays frozen and spends the training
steps in CPU memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import ImageInfo, Noised
from train.families.flux import PROMPT_TOKENS, FlowMatchingFamily

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

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        transformer = Flux2Transformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
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

    def guidance_for_sampling(self, cfg, cfg_scale: float) -> float:
        return cfg_scale  # classifier-free guidance on Klein base models; distilled Klein ignores it

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        from diffusers import Flux2KleinPipeline

        from train.families.flux import _onloaded

        with _onloaded(base, self.offloaded_components, park=False):
            hidden = Flux2KleinPipeline._get_qwen3_prompt_embeds(
                base.text_encoder, base.tokenizer, list(captions), dtype=base.weight_dtype, device=base.device,
                max_sequence_length=PROMPT_TOKENS)
        return {"hidden": hidden}

    def encode_pixels(self, base, pixels) -> tuple[Any, Any]:
        import torch

        with torch.no_grad():
            dist = base.vae.encode(pixels.to(base.device, base.vae.dtype)).latent_dist
        return dist.mode(), dist.std

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

        is_distilled = bool(_index(base.path).get("is_distilled", False))
        pipe = Flux2KleinPipeline(scheduler=scheduler or self.preview_scheduler(base), vae=base.vae,
                                  text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                  transformer=base.transformer, is_distilled=is_distilled)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _index(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
