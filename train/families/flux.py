"""FLUX.1 (dev and schnell): a rectified-flow transformer over packed latents, CLIP + T5 prompts.

As diffusers' ``train_dreambooth_lora_flux.py`` does it: VAE latents shifted and scaled by the
VAE's factors, sigmas drawn by a weighting scheme (``train/flow.py``), latents packed into 2x2
patches with their latent image ids, the guidance embedding fed ``guidance_scale`` on
guidance-distilled bases (dev), and the velocity ``noise - latents`` as the target. LoRA goes
on the transformer's attention and feed-forward projections (the reference's set by default,
``lora_target_modules`` to choose), optionally on the CLIP text encoder; T5 stays frozen.

``FlowMatchingFamily`` is what FLUX.1 and FLUX.2 Klein share (``train/families/flux2_klein.py``
only adds its encoders, latent layout and key names): the objective, the quantized base, the
text encoders that leave the accelerator between uses, the flow-matching sampler for previews.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from train.families.base import Family, ImageInfo, Noised, vae_scale

# diffusers' train_dreambooth_lora_flux.py default (--lora_layers unset).
FLUX_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")
# The widths diffusers' _convert_kohya_flux_lora_to_diffusers splits a single block's fused linear1
# into (q, k, v, proj_mlp of FLUX.1-dev / schnell): it reads no other shape.
KOHYA_CONVERTER_LINEAR1 = (3072, 3072, 3072, 12288)
PROMPT_TOKENS = 512  # T5 / Qwen sequence length: the pipelines' default, so previews see what training saw

# Where the flow families' recipe numbers come from (docs/families.md has the table).
FLUX_README = "diffusers examples/dreambooth/README_flux.md (train_dreambooth_lora_flux.py)"
AI_TOOLKIT_FLUX = "ai-toolkit config/examples/train_lora_flux_24gb.yaml"
ONETRAINER_FLUX = "OneTrainer training_presets/#flux LoRA.json"
FLOW_SOURCES = {
    "mixed_precision": ("bf16 on a GPU that has it, fp16 on an older GPU, fp32 on a CPU (train/recipes.py Device); "
                        f"{FLUX_README}: --mixed_precision=bf16"),
    "optimizer": f"{AI_TOOLKIT_FLUX}: optimizer adamw8bit; {FLUX_README}: --use_8bit_adam in its memory example",
    "learning_rate": f"{AI_TOOLKIT_FLUX}: lr 1e-4; {FLUX_README}: --learning_rate=1e-4 with AdamW",
    "lr_scheduler": f"{FLUX_README}: --lr_scheduler=constant",
    "resolution": f"{FLUX_README}: --resolution=1024",
    "gradient_checkpointing": f"{AI_TOOLKIT_FLUX}: gradient_checkpointing true ('need the on unless you have a ton of "
                              f"vram'); {FLUX_README}: --gradient_checkpointing in its memory example",
    "weighting_scheme": (f"{ONETRAINER_FLUX} and #flux2 LoRA 16GB.json: timestep_distribution LOGIT_NORMAL; ai-toolkit's "
                         "default timestep_type 'sigmoid' (a logit-normal draw) - mean 0, std 1"),
    "preview_every": "ai-toolkit's sample_every: 250 (config/examples, ui jobConfig)",
}


class FlowMatchingFamily(Family):
    """A rectified-flow transformer family; subclasses load their components and encode prompts."""

    denoiser = "transformer"
    quantized_components: tuple[str, ...] = ("transformer",)   # what base_quantization quantizes
    offloaded_components: tuple[str, ...] = ()                 # text encoders parked off the accelerator

    def check_config(self, cfg, source: str = "config") -> None:
        from train.errors import ConfigError

        super().check_config(cfg, source)
        if cfg.train_text_encoder and not self.text_encoders:
            raise ConfigError(f"{source}: train_text_encoder (--train-text-encoder): {self.title} trains no text "
                              "encoder LoRA (its text encoder stays frozen); turn it off")

    def check_components(self, path: Path, index: Mapping[str, Any]) -> None:
        """A flow-matching base trains on its FlowMatchEulerDiscreteScheduler: a folder whose
        scheduler is an ε- or v-prediction (DDPM-family) one is refused, naming the file."""
        import json

        from train.errors import ConfigError

        super().check_components(path, index)
        file = Path(path) / "scheduler" / "scheduler_config.json"
        try:
            sched = json.loads(file.read_text())
        except (OSError, ValueError):
            return  # loading reports a missing/unreadable scheduler itself
        name, prediction = sched.get("_class_name", ""), sched.get("prediction_type")
        if not str(name).startswith("FlowMatch") or prediction is not None:
            raise ConfigError(f"{file}: {name} with prediction_type={prediction!r} on a {self.title} base; "
                              f"{self.title} trains by flow matching (velocity), with a FlowMatchEulerDiscreteScheduler "
                              "(epsilon / v_prediction are for SD and SDXL bases)")

    def size_multiple(self, base) -> int:
        # Latents are packed (FLUX.1) or patchified (Klein) in 2x2 patches: 16 px on the real VAEs.
        return vae_scale(base) * 2

    # --- loading -----------------------------------------------------------------------------

    def _load_scheduler(self, path: Path) -> dict[str, Any]:
        from diffusers import FlowMatchEulerDiscreteScheduler

        from train.flow import SigmaTable

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        return {"noise_scheduler": scheduler, "sigma_table": SigmaTable.from_scheduler_config(scheduler.config)}

    def quantize(self, modules: dict[str, Any], kind: str, device, dtype) -> None:
        """Quantize the frozen ``quantized_components`` in place, once, at load (QLoRA)."""
        from train.quantize import quantize_linears

        for name in self.quantized_components:
            quantize_linears(modules[name], kind, device=device, compute_dtype=dtype)

    def load_pipeline(self, folder: Path, *, dtype, device=None):
        """The export check's reload: a second copy of a 12B-parameter base. On a GPU it stays in
        CPU memory, each model moved in only while it runs (diffusers' model CPU offload)."""
        import torch

        if device is None or torch.device(device).type == "cpu":
            return super().load_pipeline(folder, dtype=dtype, device=device)
        pipe = super().load_pipeline(folder, dtype=dtype)
        pipe.enable_model_cpu_offload(device=device)
        return pipe

    # --- text encoders: on the accelerator only while they encode ------------------------------

    def prompt_encoding(self, base):
        """Bring the text encoders onto the accelerator, and park them in CPU memory afterwards
        (T5-XXL alone is ~9.5 GB in bf16): nothing is reloaded from disk between tasks."""
        return _onloaded(base, self.offloaded_components)

    def _parked(self, modules: dict[str, Any], device) -> dict[str, Any]:
        """Loaded text encoders start in CPU memory on an accelerator: they come on for the first
        prompts (the loader leaves ``_keep_placement`` modules where they are)."""
        for name in self.offloaded_components:
            modules[name]._keep_placement = device.type != "cpu"
        return modules

    # --- objective -----------------------------------------------------------------------------

    def noise(self, base, cfg, latents, rng) -> Noised:
        import torch

        from train.flow import loss_weights, noisy_input, sample_sigmas, velocity_target

        noise = torch.randn(latents.shape, generator=rng, dtype=torch.float32).to(latents.device, latents.dtype)
        sigmas, timesteps = sample_sigmas(base.sigma_table, latents.shape[0], rng, scheme=cfg.weighting_scheme,
                                          logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
                                          mode_scale=cfg.mode_scale)
        weight = loss_weights(cfg.weighting_scheme, sigmas)
        return Noised(model_input=noisy_input(latents, noise, sigmas), target=velocity_target(latents, noise),
                      timesteps=timesteps.to(latents.device), weight=weight.to(latents.device),
                      extra={"guidance_scale": cfg.guidance_scale})

    def preview_scheduler(self, base):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(base.noise_scheduler.config)

    # --- files ----------------------------------------------------------------------------------

    def lora_parts(self, pipe, *, train_text_encoder: bool, rank: int, lora_alpha: float):
        """Check the adapter is there with the task's rank and alpha; the writers read the modules."""
        from train.export.errors import ExportError
        from train.export.lora import has_adapter

        for name in self.lora_components(pipe, train_text_encoder):
            if not has_adapter(getattr(pipe, name)):
                raise ExportError(f"the {name} has no LoRA adapter attached: nothing to export")
        config = getattr(pipe, self.denoiser).peft_config["default"]
        if config.r != rank or float(config.lora_alpha) != float(lora_alpha):
            raise ExportError(f"{self.denoiser} adapter has r={config.r}, lora_alpha={config.lora_alpha} but the "
                              f"task says rank={rank}, lora_alpha={lora_alpha}: the export would record the wrong scale")
        return None

    def save_lora(self, pipe, model_dir: Path, *, save_dtype: str, train_text_encoder: bool, parts=None) -> Path:
        """The diffusers file as the reference scripts save it: peft keys (``lora_A``/``lora_B``),
        not the UNet-era ``lora.down`` names, which FLUX's loaders do not map back."""
        from peft.utils import get_peft_model_state_dict

        from train.export.lora import ADAPTER, DTYPES, LORA_WEIGHT_NAME, _json_safe

        kwargs = {}
        for name in self.lora_components(pipe, train_text_encoder):
            module = getattr(pipe, name)
            state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
            kwargs[f"{name}_lora_layers"] = {k: v.detach().to("cpu", DTYPES[save_dtype]).contiguous()
                                             for k, v in state.items()}
            kwargs[f"{name}_lora_adapter_metadata"] = _json_safe(module.peft_config[ADAPTER].to_dict())
        self.pipeline_type().save_lora_weights(model_dir, **kwargs)
        return Path(model_dir) / LORA_WEIGHT_NAME

    # The ComfyUI / kohya copy is in BFL layer names (train/families/bfl_keys.py).

    def bfl_state(self, pipe, train_text_encoder: bool) -> dict[str, Any]:
        raise NotImplementedError

    def save_kohya(self, pipe, model_dir: Path, name: str, *, train_text_encoder: bool, save_dtype: str) -> Path:
        from safetensors.torch import save_file

        from train.export.lora import DTYPES

        path = Path(model_dir) / f"{name}.safetensors"
        state = self.bfl_state(pipe, train_text_encoder)
        save_file({k: v.to(DTYPES[save_dtype]).contiguous() for k, v in state.items()}, str(path),
                  metadata={"format": "pt", "ss_network_module": "networks.lora", "modelspec.architecture": self.name})
        return path


class Flux(FlowMatchingFamily):
    name = "flux"
    title = "FLUX.1 (dev/schnell)"
    class_names = ("FluxPipeline",)
    pipeline_class = "FluxPipeline"
    text_encoders = ("text_encoder",)          # CLIP's LoRA is optional; T5 is never trained
    required = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    denoiser_targets = FLUX_TARGETS
    quantized_components = ("transformer", "text_encoder_2")
    offloaded_components = ("text_encoder_2",)  # T5-XXL; CLIP (0.25 GB) stays, it may train
    kohya_prefixes = {"transformer": "lora_unet", "text_encoder": "lora_te1"}
    # The 12B transformer is 24 GB in bf16 (a bf16 LoRA peaks at 26 GB: HF blog flux-qlora), more
    # than the 24 GB target: NF4 (6.7 GB) with checkpointing peaks near 9 GB there; T5-XXL waits
    # in CPU memory between prompt encodings.
    recipe = {"mixed_precision": "bf16", "rank": 16, "optimizer": "adamw8bit", "learning_rate": 1e-4,
              "lr_scheduler": "constant", "max_train_steps": 1000, "resolution": 1024, "train_text_encoder": False,
              "gradient_checkpointing": True, "base_quantization": "nf4", "weighting_scheme": "logit_normal",
              "preview_every": 250}
    variant_recipes = {
        "dev": {"guidance_scale": 1.0, "preview_inference_steps": 28, "preview_guidance_scale": 3.5},
        "schnell": {"preview_inference_steps": 4, "preview_guidance_scale": 0.0},
    }
    recipe_sources = {
        **FLOW_SOURCES,
        "rank": f"{AI_TOOLKIT_FLUX}: linear 16, linear_alpha 16 (alpha = rank: scale 1)",
        "max_train_steps": (f"{AI_TOOLKIT_FLUX}: 2000 steps, '500 - 4000 is a good range'; {FLUX_README}: 500 steps x "
                            "gradient_accumulation 4; here 1000 one-image steps per user"),
        "train_text_encoder": f"{AI_TOOLKIT_FLUX}: train_text_encoder false ('probably won't work with flux'); T5 is "
                              "never trained",
        "base_quantization": ("HF blog 'flux-qlora' (2025-06-19): a bf16 FLUX.1-dev LoRA peaks at 26 GB, NF4 QLoRA at "
                              f"~9 GB; {ONETRAINER_FLUX}: transformer NFLOAT_4"),
        "guidance_scale": f"{FLUX_README}: --guidance_scale=1 (the guidance embedding's value while training)",
        "preview_inference_steps": "FluxPipeline's default num_inference_steps=28",
        "preview_guidance_scale": "FluxPipeline's default guidance_scale=3.5 (the distilled guidance embedding)",
        "schnell:preview_inference_steps": ("diffusers docs api/pipelines/flux.md, timestep-distilled example: "
                                            "num_inference_steps=4 (ai-toolkit's schnell example: sample_steps 4)"),
        "schnell:preview_guidance_scale": "diffusers docs api/pipelines/flux.md: for schnell 'guidance_scale needs to be 0'",
    }

    def detect_variant(self, path: Path, index: Mapping[str, Any]) -> str:
        """dev has a guidance embedding (guidance-distilled), schnell has none (timestep-distilled)."""
        return "dev" if _component_config(path, "transformer").get("guidance_embeds", True) else "schnell"

    def variant_warning(self, variant: str) -> str | None:
        if variant == "schnell":
            return ("FLUX.1-schnell is timestep-distilled: a LoRA trained on it directly can lose its 1-4 step "
                    "sampling (ai-toolkit trains schnell only with a de-distillation training adapter); check the "
                    "previews, or train on FLUX.1-dev (guidance-distilled; its licence is non-commercial)")
        return None

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        return self._parked({
            "transformer": FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype),
            "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
            "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype),
            "text_encoder_2": T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype),
            "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
            "tokenizer_2": T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_2"),
            **self._load_scheduler(path),
        }, device)

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        # The pipeline's own encode_prompt: CLIP's pooled output and T5's hidden states.
        with _onloaded(base, self.offloaded_components, park=False):
            hidden, pooled, _ = self._text_pipeline(base).encode_prompt(
                prompt=list(captions), device=base.device, max_sequence_length=PROMPT_TOKENS)
        return {"hidden": hidden, "pooled": pooled}

    def sample_latents(self, base, mean, std, rng):
        import torch

        eps = torch.randn(mean.shape, generator=rng, dtype=torch.float32).to(mean.device, mean.dtype)
        vae = base.vae.config
        return ((mean + std * eps) - vae.shift_factor) * vae.scaling_factor

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        from diffusers import FluxPipeline

        from train.flow import guidance_vector

        x = noised.model_input
        b, c, h, w = x.shape
        transformer = base.transformer
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        hidden = prompts["hidden"]
        txt_ids = hidden.new_zeros(hidden.shape[1], 3)
        guidance = guidance_vector(transformer.config.guidance_embeds, noised.extra["guidance_scale"], b, x.device)
        pred = transformer(hidden_states=packed, timestep=noised.timesteps / 1000, guidance=guidance,
                           pooled_projections=prompts["pooled"], encoder_hidden_states=hidden, txt_ids=txt_ids,
                           img_ids=img_ids, return_dict=False)[0]
        scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
        return FluxPipeline._unpack_latents(pred, height=h * scale, width=w * scale, vae_scale_factor=scale)

    def pipeline(self, base, scheduler: Any = None):
        from diffusers import FluxPipeline

        pipe = FluxPipeline(scheduler=scheduler or self.preview_scheduler(base), vae=base.vae,
                            text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                            text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                            transformer=base.transformer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def unreadable_by_diffusers(self, pipe, format_name: str) -> str | None:
        """diffusers' kohya-FLUX.1 converter splits a single block's ``linear1`` at FLUX.1's
        widths: the kohya copy of a LoRA on single blocks of another width (the tiny test models)
        is still what ComfyUI / Forge read by BFL names, but diffusers cannot load it."""
        from train.families.bfl_keys import LAYOUTS, lora_layers

        blocks = pipe.transformer.single_transformer_blocks
        if format_name != "kohya" or not len(blocks):
            return None
        members = next(m for bfl, m in LAYOUTS["flux"][1] if bfl == "linear1")
        widths = tuple(getattr(blocks[0].get_submodule(m), "base_layer", blocks[0].get_submodule(m)).out_features
                       for m in members)
        if widths == KOHYA_CONVERTER_LINEAR1 or not any(
                k.startswith("single_transformer_blocks.") for k in lora_layers(pipe.transformer)):
            return None
        return (f"not reloaded: diffusers' kohya-FLUX.1 converter only splits single blocks of FLUX.1's widths "
                f"{KOHYA_CONVERTER_LINEAR1}, this transformer's are {widths} (ComfyUI and Forge read the BFL names "
                "at any width; the 'lora' file loads in diffusers)")

    def bfl_state(self, pipe, train_text_encoder: bool) -> dict[str, Any]:
        from train.families.bfl_keys import kohya_flux_state

        return kohya_flux_state(pipe.transformer, pipe.text_encoder if train_text_encoder else None)

    def _text_pipeline(self, base):
        from diffusers import FluxPipeline

        return FluxPipeline(scheduler=None, vae=None, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                            text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2, transformer=None)


def _component_config(path: Path, component: str) -> dict[str, Any]:
    """``<path>/<component>/config.json`` ({} when absent or unreadable: loading reports that)."""
    import json

    try:
        config = json.loads((Path(path) / component / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


# --- moving text encoders ----------------------------------------------------------------------

def _movable(module) -> bool:
    """Quantized weights stay where bitsandbytes put them; a module being trained (CLIP with a
    LoRA) stays with its optimizer state."""
    quantized = getattr(module, "is_loaded_in_4bit", False) or getattr(module, "is_loaded_in_8bit", False)
    return module is not None and not quantized and not any(p.requires_grad for p in module.parameters())


@contextlib.contextmanager
def _onloaded(base, names: tuple[str, ...], park: bool = True):
    for name in names:
        module = base.modules.get(name)
        if module is not None and module.device != base.device:
            module.to(base.device)
    try:
        yield
    finally:
        if park:
            _park(base, names)


def _park(base, names: tuple[str, ...]) -> None:
    if base.device.type == "cpu":
        return
    for name in names:
        module = base.modules.get(name)
        if module is not None and _movable(module):
            module.to("cpu")
