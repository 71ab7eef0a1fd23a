"""The model-family interface: everything the one training loop needs to know about a model.

``train/task.py`` is one loop for every family. What differs between Stable Diffusion 1.x/2.x,
SDXL, Flux-class flow-matching transformers and whatever comes next lives in one module per
family under ``train/families/``, each a subclass of :class:`Family` registered in
``train/families/__init__.py``. The loop only ever calls the methods below, in this order:

    detect_variant(path, index)             which variant the folder holds (its recipe: train/recipes.py)
    check_config(cfg)                       before any model loads (no torch needed)
    load(path, device, dtype)               once per host: the frozen components
    lora_targets(cfg)                       {component: target module names} for attach_lora
    prompt_encoding(base) / encode_prompts  once per task when the text encoders are frozen
    join_prompts(rows)                      a micro-batch of cached prompts (pads ragged ones)
    size_multiple(base)                     side multiple of the aspect-ratio buckets (crop=bucket)
    encode_pixels / sample_latents          VAE posterior (cached per task) and a latent sample
    noise(base, cfg, latents, rng)          -> Noised: model input, target, timesteps, loss weight
    denoise(base, noised, prompts, images)  -> the prediction (same layout as noised.target)
    pipeline(base), sampling_kwargs         previews and class images over the in-memory modules
    save_lora / kohya_modules               the diffusers LoRA file and the kohya/ComfyUI copy

How to add a family (a new module, nothing else changes in the loop):

1. ``train/families/<name>.py``: ``class MyFamily(Family)`` with the class attributes
   (``name``, ``class_names`` = the ``_class_name`` values of ``model_index.json`` it handles,
   ``pipeline_class``, ``denoiser``, ``text_encoders``, ``required``) and the methods marked
   "must" below. Every random draw takes the ``rng`` passed in (a CPU ``torch.Generator``
   seeded by (seed, micro-step)): that is what makes resume exact.
2. Register it: one entry in ``FAMILY_MODULES`` of ``train/families/__init__.py``.
3. Settings only some families understand carry ``families=(...)`` in their
   ``TrainConfig`` field metadata (``train/config.py``); export formats list the families they
   support in ``train/export/formats.py``. ``check_config`` enforces both, before any load.
4. Its recipe: ``recipe`` (and ``variant_recipes`` with ``detect_variant``) are the defaults a
   task gets when it sets nothing, ``recipe_sources`` says where each number comes from
   (``tests/train/test_recipes.py`` checks every one is a valid, sourced setting).
5. A tiny builder in ``scripts/make_tiny_model.py`` (``BUILDERS``) and the family's tests.

Methods get the loaded :class:`train.pipeline.BaseModel` (``base``), whose ``modules`` dict
holds the components by their diffusers names (``base.unet``, ``base.text_encoder_2``,
``base.transformer`` ... read through attribute access).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from train.errors import ConfigError

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class ImageInfo:
    """What the denoiser may need to know about one training image besides its latents
    (SDXL's micro-conditioning: original size and crop offset, as (height, width) / (top, left))."""

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]


@dataclass(frozen=True)
class Noised:
    """One micro-batch after the family's noising: what the denoiser sees and should predict.

    ``model_input`` is in latent layout (B, C, H, W); a family that packs latents (Flux) packs
    inside ``denoise`` and unpacks its prediction again, so the loss compares like with like.
    ``weight`` is a per-sample loss weight (min-SNR, flow-matching weighting) or None (= 1).
    ``extra`` carries family-specific values from ``noise`` to ``denoise`` (e.g. sigmas).
    """

    model_input: Any
    target: Any
    timesteps: Any
    weight: Any = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Family:
    """Base class of a model family; subclasses fill in the class attributes and methods."""

    name: ClassVar[str] = ""                       # short id: "sd", "sdxl", "flux", ...
    title: ClassVar[str] = ""                      # for messages: "Stable Diffusion 1.x/2.x"
    class_names: ClassVar[tuple[str, ...]] = ()    # model_index.json _class_name values handled
    pipeline_class: ClassVar[str] = ""             # diffusers pipeline class (previews, LoRA files)
    denoiser: ClassVar[str] = "unet"               # component that gets the LoRA ("unet"/"transformer")
    text_encoders: ClassVar[tuple[str, ...]] = ()  # components trained with train_text_encoder
    required: ClassVar[tuple[str, ...]] = ()       # components model_index.json must list
    denoiser_targets: ClassVar[tuple[str, ...]] = ()
    text_encoder_targets: ClassVar[tuple[str, ...]] = TEXT_ENCODER_TARGETS
    kohya_prefixes: ClassVar[Mapping[str, str]] = {}  # component -> kohya key prefix ("lora_unet")
    # The defaults a task gets when it sets nothing (train/recipes.py): TrainConfig field -> value,
    # overrides per variant (detect_variant), and where each number comes from (docs/families.md).
    recipe: ClassVar[Mapping[str, Any]] = {}
    variant_recipes: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    recipe_sources: ClassVar[Mapping[str, str]] = {}

    # --- which base: before any model loads, no torch -----------------------------------------

    def detect_variant(self, path: Path, index: Mapping[str, Any]) -> str:
        """Which published variant the folder holds ("" when the family has one), from its
        ``model_index.json`` (``index``) and component configs; picks ``variant_recipes``."""
        return ""

    def variant_warning(self, variant: str) -> str | None:
        """What a user should know before training a LoRA on this variant (logged per task and
        recorded in the manifest), e.g. that a step-distilled base loses its few-step sampling."""
        return None

    # --- validation: before any model loads, no torch --------------------------------------

    def check_config(self, cfg, source: str = "config") -> None:
        """Refuse settings and export formats this family does not support (ConfigError)."""
        from train.config import family_settings_problems
        from train.export.formats import family_format_problems

        problems = family_settings_problems(cfg, self) + family_format_problems(cfg.export_formats, self)
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))

    def check_components(self, path: Path, index: Mapping[str, Any]) -> None:
        missing = [c for c in self.required if c not in index]
        if missing:
            raise ConfigError(f"{path}/model_index.json: not a {self.title} pipeline "
                              f"(missing {', '.join(missing)})")

    # --- loading: once per host ---------------------------------------------------------------

    def load(self, path: Path, device, dtype, **options: Any) -> dict[str, Any]:
        """Must: the components by diffusers name (the training noise scheduler as
        ``noise_scheduler``). ``load_base`` then freezes them and moves them to ``device``
        (except modules a quantizer placed; mark others with ``module._keep_placement = True``).
        ``options`` are ``load_base``'s extra keywords (e.g. a base quantization), for families
        that take any; the others get none."""
        raise NotImplementedError

    def quantize(self, modules: dict[str, Any], kind: str, device, dtype) -> None:
        """Quantize the frozen components for ``base_quantization`` (once per host, at load)."""
        raise ConfigError(f"base_quantization={kind!r}: {self.title} bases cannot be trained quantized; use none")

    def load_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``<pipeline_class>.from_pretrained`` (SD: no safety checker)."""
        return {}

    def pipeline_type(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def load_pipeline(self, folder: Path, *, dtype, device=None):
        """A user's load of a saved pipeline folder of this family (export round trips)."""
        pipe = self.pipeline_type().from_pretrained(folder, dtype=dtype, **self.load_kwargs())
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device) if device is not None else pipe

    # --- LoRA ----------------------------------------------------------------------------------

    def lora_targets(self, cfg) -> dict[str, tuple[str, ...]]:
        """{component: target module names}: the denoiser always (``lora_target_modules`` when
        set), the text encoders with ``train_text_encoder``."""
        denoiser = cfg.lora_targets or self.denoiser_targets
        targets = {self.denoiser: tuple(denoiser)}
        if cfg.train_text_encoder:
            targets.update({name: self.text_encoder_targets for name in self.text_encoders})
        return targets

    def trained_components(self, cfg) -> tuple[str, ...]:
        return tuple(self.lora_targets(cfg))

    # --- prompts -------------------------------------------------------------------------------

    def prompt_encoding(self, base):
        """Context around prompt encoding: a family whose text encoders live off the accelerator
        between tasks moves them in here and out again afterwards."""
        return contextlib.nullcontext()

    def encode_prompts(self, base, captions: Sequence[str], cfg=None) -> dict[str, Any]:
        """Must: {name: tensor with first dim len(captions)}, passed to ``denoise`` as ``prompts``.
        Runs under no_grad when cached (frozen text encoders), with grad when they train.
        ``cfg`` is the task's TrainConfig (e.g. a family's max sequence length setting)."""
        raise NotImplementedError

    def join_prompts(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One micro-batch from cached per-caption rows ({name: tensor, first dim 1}). Rows whose
        sequence lengths differ (families that do not pad prompts to a fixed length) are
        right-padded with zeros; a ``mask`` entry (1 = token, 0 = padding) marks the padding,
        and columns that are padding in every row are dropped again."""
        import torch
        import torch.nn.functional as F

        out = {}
        for name in rows[0]:
            parts = [row[name] for row in rows]
            if len({p.shape[1:] for p in parts}) > 1 and all(p.ndim >= 2 for p in parts):
                n = max(p.shape[1] for p in parts)
                parts = [F.pad(p, (0, 0) * (p.ndim - 2) + (0, n - p.shape[1])) for p in parts]
            out[name] = torch.cat(parts)
        mask = out.get("mask")
        if mask is not None and mask.ndim == 2:
            keep = int(mask.bool().any(dim=0).nonzero().max()) + 1 if mask.bool().any() else mask.shape[1]
            out = {k: (v[:, :keep] if v.ndim >= 2 and v.shape[1] == mask.shape[1] else v) for k, v in out.items()}
        return out

    # --- images ----------------------------------------------------------------------------------

    def encode_pixels(self, base, pixels) -> tuple[Any, Any]:
        """(mean, std) of the VAE posterior of ``pixels`` (B, 3, H, W in [-1, 1])."""
        import torch

        with torch.no_grad():
            dist = base.vae.encode(pixels.to(base.device, base.vae.dtype)).latent_dist
        return dist.mean, dist.std

    def size_multiple(self, base) -> int:
        """Image sides must be a multiple of this for the latents to fit the denoiser (the VAE's
        downsampling here; families whose denoiser downsamples or packs further multiply it):
        the aspect-ratio buckets of ``crop=bucket`` are built from it."""
        return vae_scale(base)

    def sample_latents(self, base, mean, std, rng):
        """A posterior sample, scaled (and shifted) the way the denoiser expects."""
        import torch

        eps = torch.randn(mean.shape, generator=rng, dtype=torch.float32).to(mean.device, mean.dtype)
        cfg = base.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return ((mean + std * eps) - shift) * cfg.scaling_factor

    # --- objective -------------------------------------------------------------------------------

    def noise(self, base, cfg, latents, rng) -> Noised:
        """Must: draw noise and timesteps (or sigmas) from ``rng``; the noisy input and target."""
        raise NotImplementedError

    def denoise(self, base, noised: Noised, prompts: Mapping[str, Any], images: Sequence[ImageInfo], cfg=None):
        """Must: the denoiser's prediction for ``noised.model_input`` (same layout as ``noised.target``)."""
        raise NotImplementedError

    # --- previews and files ----------------------------------------------------------------------

    def pipeline(self, base, scheduler: Any = None):
        """Must: a pipeline of ``pipeline_class`` over the in-memory modules (nothing reloaded)."""
        raise NotImplementedError

    def sampling_kwargs(self, base, guidance_scale: float) -> dict[str, Any]:
        """The keywords of the pipeline call that carry ``guidance_scale`` (previews and class
        images; most pipelines: ``guidance_scale``; Qwen-Image: ``true_cfg_scale`` and a negative
        prompt; a CFG-distilled variant samples without guidance)."""
        return {"guidance_scale": guidance_scale}

    def preview_scheduler(self, base):
        """The sampler of previews: a fast multistep one for DDPM-trained models."""
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(base.noise_scheduler.config)

    def lora_components(self, pipe, train_text_encoder: bool) -> tuple[str, ...]:
        names = (self.denoiser,) + (self.text_encoders if train_text_encoder else ())
        return tuple(n for n in names if getattr(pipe, n, None) is not None)

    def lora_parts(self, pipe, *, train_text_encoder: bool, rank: int, lora_alpha: float):
        """The trained adapter's weights (checked against the task's rank and alpha); what
        ``save_lora`` gets as ``parts``."""
        from train.export import lora

        return lora.lora_parts(pipe, train_text_encoder=train_text_encoder, rank=rank, lora_alpha=lora_alpha)

    def save_lora(self, pipe, model_dir: Path, *, save_dtype: str, train_text_encoder: bool, parts=None) -> Path:
        """``model_dir/pytorch_lora_weights.safetensors`` through ``<pipeline_class>.save_lora_weights``,
        with each part's peft config as adapter metadata (alpha survives the reload)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        from train.export.lora import ADAPTER, DTYPES, LORA_WEIGHT_NAME, _json_safe

        dtype = DTYPES[save_dtype]
        kwargs = {}
        for name in self.lora_components(pipe, train_text_encoder):
            module = getattr(pipe, name)
            state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
            layers = convert_state_dict_to_diffusers(state)
            kwargs[f"{name}_lora_layers"] = {k: v.detach().to("cpu", dtype).contiguous() for k, v in layers.items()}
            kwargs[f"{name}_lora_adapter_metadata"] = _json_safe(module.peft_config[ADAPTER].to_dict())
        self.pipeline_type().save_lora_weights(model_dir, **kwargs)
        return Path(model_dir) / LORA_WEIGHT_NAME

    def unreadable_by_diffusers(self, pipe, format_name: str) -> str | None:
        """Why diffusers cannot read ``format_name`` back for this model, where its own loader
        is what falls short (the export check then records the reason instead of a reload)."""
        return None

    def kohya_modules(self, pipe, train_text_encoder: bool) -> list[tuple[str, Any]]:
        """(kohya key prefix, module) for the kohya/ComfyUI copy."""
        return [(self.kohya_prefixes[n], getattr(pipe, n)) for n in self.lora_components(pipe, train_text_encoder)]

    def save_kohya(self, pipe, model_dir: Path, name: str, *, train_text_encoder: bool, save_dtype: str) -> Path:
        """``model_dir/<name>.safetensors`` in the kohya / ComfyUI key layout of this family
        (UNet families: ``lora_unet_*``, ``lora_te*_*`` with ``.alpha``; override for others)."""
        from train.export import lora

        return lora.save_kohya(pipe, model_dir, name, train_text_encoder=train_text_encoder, save_dtype=save_dtype,
                               modules=self.kohya_modules(pipe, train_text_encoder))


def vae_scale(base) -> int:
    """Pixels per latent along a side (8 for every released SD / SDXL / FLUX / Z-Image / Qwen-Image VAE)."""
    vae = base.vae
    if hasattr(vae, "temperal_downsample"):  # Qwen-Image's video-style VAE, counted as QwenImagePipeline does
        return 2 ** len(vae.temperal_downsample)
    return 2 ** (len(vae.config.block_out_channels) - 1)
