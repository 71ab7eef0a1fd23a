"""Model families as fanout sees them: what a step costs and what GPU memory training needs (stdlib).

One table (FAMILIES) feeds the plan's cost units, the simulator's step times and per-task and
per-slot overheads, and the fit check (`fanout.fit`). fanout never imports train, so the family
of a job is learned the way train learns it, from the base folder's ``model_index.json``
``_class_name`` (a local folder, or the object under the model's S3 URI), or from an explicit
setting (`--family`, FANOUT_MODEL_FAMILY). The ids and variants are the project's contract
(sd, sdxl, flux, flux2-klein: base|distilled, z-image: base|turbo, qwen-image).

Every figure says where it comes from (docs/fanout.md#model-families has the table). "assumption"
marks a number nobody here measured: no GPU was lent to this work. Step times are seconds per
training micro-step (batch 1, bf16, LoRA, the family's gradient checkpointing) on one A10G
(ml.g5); other GPUs scale by `fanout.instances.Gpu.speed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from fanout.errors import FamilyError

# One cost unit of the plan: an SD 1.5 training step at 512 px on an A10G (the simulator's step
# time for it, TrainTimes' first row). Plans stay in these units so that they read as before.
UNIT_S = 0.30
# A sampling step (previews, class images) is a forward pass: about a third of a training step
# (forward + backward through the frozen base); CFG doubles the batch. Assumption.
SAMPLING_SHARE = 1.0 / 3.0


@dataclass(frozen=True)
class Component:
    """One part of the base that can sit on the GPU while a task trains."""

    name: str
    params_b: float                  # parameters, billions
    placement: str = "gpu"           # gpu | offloaded (in CPU memory, on the GPU only to encode) |
                                     # offloaded_unless_quantized (a quantized copy stays on the GPU)
    quantized: bool = False          # base_quantization quantizes it (the denoiser always, when set)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    title: str
    class_names: tuple[str, ...]                  # model_index.json _class_name values
    variants: tuple[str, ...] = ("",)              # first: the default
    step_s: Mapping[int, float] = field(default_factory=dict)   # resolution -> s per micro-step on an A10G
    step_source: str = ""
    cfg: bool = True                                # previews run classifier-free guidance (2x batch) when guidance > 1
    uncfg_variants: tuple[str, ...] = ()            # variants sampled without CFG whatever the scale
    task_fixed_s: float = 15.0                      # per task: images, LoRA attach, export, upload
    load_s: float = 30.0                            # per slot: base read from the volume (and quantized)
    overhead_source: str = ""
    native_resolution: int = 512                    # where activation_gib was estimated
    components: tuple[Component, ...] = ()          # the denoiser first
    activation_gib: tuple[float, float] = (1.0, 3.0)   # (gradient checkpointing on, off) at native res, bf16, batch 1
    memory_source: str = ""
    quantizable: bool = False                       # base_quantization is a setting of this family
    trains_text_encoder: bool = True                # train_text_encoder is a setting of this family
    defaults: Mapping[str, Any] = field(default_factory=dict)   # settings a task gets when it sets nothing,
                                                                 # beyond TrainConfig's: the family's recipe
    variant_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # a variant's recipe overrides

    @property
    def denoiser(self) -> Component:
        return self.components[0]

    def step_seconds(self, resolution: int, table: Mapping[Any, float] | None = None) -> float:
        """Seconds per micro-step at ``resolution`` on an A10G: the nearest row, scaled by pixel area."""
        rows = {int(k): float(v) for k, v in (table or self.step_s).items()}
        nearest = min(rows, key=lambda r: (abs(r - resolution), r))
        return rows[nearest] * (resolution / nearest) ** 2

    def defaults_for(self, variant: str = "") -> dict[str, Any]:
        """The recipe of ``variant`` (the default variant's when none is given)."""
        return {**self.defaults, **self.variant_defaults.get(variant or self.variants[0], {})}

    def uses_cfg(self, variant: str, guidance_scale: float) -> bool:
        return self.cfg and variant not in self.uncfg_variants and guidance_scale > 1.0


_SD_STEP = ("assumption: derived from the diffusers LoRA example (SD 1.5, 512 px, 15,000 steps x 4 accumulation in "
            "~5 h on an 11 GB 2080 Ti, huggingface.co/docs/diffusers/training/lora), an A10G taken as at least as fast")
_DIT_STEP = ("assumption: FLUX.1's assumed 3.0 s at 1024 px scaled by the transformer's parameters ({b} B of 11.9 B; "
             "the same 4096 image tokens at 1024 px)")
_LOAD = "assumption: 15 s plus the bf16 checkpoint ({gb} GB) read at 250 MB/s from the training volume"

FAMILIES: dict[str, FamilySpec] = {f.name: f for f in (
    FamilySpec(
        "sd", "Stable Diffusion 1.x/2.x", ("StableDiffusionPipeline",),
        step_s={512: 0.30}, step_source=_SD_STEP,
        task_fixed_s=15.0, load_s=30.0,
        overhead_source=("assumption: the warm worker's measured floor is 0.63 s/task on the tiny model "
                         "(docs/container.md) before real images, export and upload"),
        native_resolution=512,
        components=(Component("unet", 0.87), Component("text_encoder", 0.35), Component("vae", 0.084)),
        activation_gib=(1.0, 3.0),
        memory_source=("parameters: SD 1.5/2.x model cards (UNet 0.86-0.87 B; SD 2's OpenCLIP-H text encoder 0.35 B, "
                       "the larger of the two); activations: assumption, below diffusers' DreamBooth README "
                       "(the whole UNet trains in 16 GB with gradient checkpointing and 8-bit Adam)")),
    FamilySpec(
        "sdxl", "Stable Diffusion XL", ("StableDiffusionXLPipeline",),
        step_s={1024: 1.25}, step_source="assumption: about 4x SD 1.5's step (2.6 B UNet, 128x128 latents at 1024 px)",
        task_fixed_s=20.0, load_s=43.0, overhead_source=_LOAD.format(gb=6.9),
        native_resolution=1024,
        components=(Component("unet", 2.57), Component("text_encoder", 0.123), Component("text_encoder_2", 0.695),
                    Component("vae", 0.084)),
        activation_gib=(5.0, 14.0),
        memory_source=("parameters: SDXL base 1.0 model card; activations: diffusers README_sdxl.md ('SDXL LoRAs with "
                       "less than 16GB of VRAM' at 1024 px with gradient checkpointing and 8-bit Adam); without "
                       "checkpointing: assumption")),
    FamilySpec(
        "flux", "FLUX.1-dev/-schnell", ("FluxPipeline",),
        step_s={1024: 3.0}, step_source="assumption (the simulator's FLUX.1 figure since issue 13; not measured)",
        cfg=False, task_fixed_s=30.0, load_s=150.0, overhead_source=_LOAD.format(gb=33.7),
        native_resolution=1024,
        components=(Component("transformer", 11.9, quantized=True), Component("text_encoder", 0.123),
                    Component("text_encoder_2", 4.76, "offloaded_unless_quantized", quantized=True),
                    Component("vae", 0.084)),
        activation_gib=(1.6, 16.0), quantizable=True,
        memory_source=("HF blog 'flux-qlora' (2025-06-19): a bf16 FLUX.1-dev LoRA at 1024 px (checkpointing, 8-bit "
                       "Adam, cached latents, no text encoders) peaks at 26 GB, NF4 QLoRA at ~9 GB; SimpleTuner "
                       "quickstart FLUX.md: 'a bit more than 30G' unquantized, 18G int8, 9G NF4; diffusers "
                       "README_flux.md: a rank-16 LoRA 'can exceed 40GB' (no checkpointing); T5-XXL encoder 4.76 B")),
    FamilySpec(
        "flux2-klein", "FLUX.2 [klein] 4B", ("Flux2KleinPipeline",), variants=("base", "distilled"),
        step_s={1024: 1.0}, step_source=_DIT_STEP.format(b=4.0), uncfg_variants=("distilled",),
        task_fixed_s=25.0, load_s=80.0, overhead_source=_LOAD.format(gb=16.2),
        native_resolution=1024,
        components=(Component("transformer", 4.0, quantized=True), Component("text_encoder", 4.02, "offloaded"),
                    Component("vae", 0.084)),
        activation_gib=(2.8, 10.0), quantizable=True, trains_text_encoder=False,
        memory_source=("SimpleTuner quickstart FLUX2.md: klein-4b ~12 GB in bf16, ~8 GB int8; BFL (blog, 2026-06): "
                       "a klein-base-4B LoRA fits 24 GB; Qwen3-4B text encoder 4.02 B, parked in CPU memory between "
                       "uses; the 9B variants (non-commercial) need more and are not modelled")),
    FamilySpec(
        "z-image", "Z-Image", ("ZImagePipeline",), variants=("base", "turbo"),
        step_s={1024: 1.55}, step_source=_DIT_STEP.format(b=6.15), uncfg_variants=("turbo",),
        task_fixed_s=25.0, load_s=97.0, overhead_source=_LOAD.format(gb=20.5),
        native_resolution=1024,
        components=(Component("transformer", 6.15, quantized=True), Component("text_encoder", 4.02, "offloaded"),
                    Component("vae", 0.084)),
        activation_gib=(3.0, 14.0), quantizable=True, trains_text_encoder=False,
        memory_source=("6.15 B transformer, Qwen3-4B text encoder parked in CPU memory (train/families/z_image.py); "
                       "SimpleTuner quickstart ZIMAGE.md: ~10-12 GB NF4, ~16-24 GB int8, ~32-40 GB unquantized when "
                       "every component trains; issue 19's target: bf16 <= 24 GB; activations: assumption")),
    FamilySpec(
        "qwen-image", "Qwen-Image", ("QwenImagePipeline",),
        step_s={1024: 5.1}, step_source=_DIT_STEP.format(b=20.4),
        task_fixed_s=40.0, load_s=245.0, overhead_source=_LOAD.format(gb=57.6),
        native_resolution=1024,
        components=(Component("transformer", 20.4, quantized=True),
                    Component("text_encoder", 8.29, "offloaded_unless_quantized", quantized=True),
                    Component("vae", 0.127)),
        activation_gib=(3.5, 24.0), quantizable=True, trains_text_encoder=False,
        memory_source=("train/families/qwen_image.py: the 20 B transformer is 41 GB in bf16, ~11 GB NF4; Qwen2.5-VL-7B "
                       "16.6 GB bf16, ~5 GB NF4, kept on the GPU when quantized; SimpleTuner QWEN_IMAGE.md: 24 GB is "
                       "the minimum, with nf4; ai-toolkit train_lora_qwen_image_24gb.yaml: 3-bit + cached text "
                       "embeddings for 24 GB; activations: assumption")),
)}

# The families' recipes (train/families/*.py: the defaults a task gets when it sets nothing, each
# value sourced in docs/families.md) as far as a task's time and GPU memory depend on them. fanout
# cannot import train, so this is a copy: tests/container/test_recipe_copy.py keeps it equal to
# train's and checks that each recipe fits the instance type the project targets. FLUX.1 is
# costed as -dev (-schnell previews in 4 steps; fanout cannot tell them apart from model_index.json).
RECIPES: dict[str, dict[str, Any]] = {
    "sd": {"max_train_steps": 500, "resolution": 512, "preview_inference_steps": 25, "preview_guidance_scale": 7.5,
           "train_text_encoder": False, "gradient_checkpointing": False, "mixed_precision": "bf16", "rank": 16},
    "sdxl": {"max_train_steps": 1000, "resolution": 1024, "preview_every": 250, "preview_inference_steps": 25,
             "preview_guidance_scale": 5.0, "train_text_encoder": False, "gradient_checkpointing": True,
             "mixed_precision": "bf16", "rank": 16},
    "flux": {"max_train_steps": 1000, "resolution": 1024, "preview_every": 250, "preview_inference_steps": 28,
             "preview_guidance_scale": 3.5, "train_text_encoder": False, "gradient_checkpointing": True,
             "mixed_precision": "bf16", "base_quantization": "nf4", "rank": 16},
    "flux2-klein": {"max_train_steps": 1000, "resolution": 1024, "preview_every": 250, "gradient_checkpointing": True,
                    "mixed_precision": "bf16", "base_quantization": "none", "rank": 32},
    "z-image": {"max_train_steps": 500, "resolution": 1024, "gradient_accumulation_steps": 4,
                "preview_inference_steps": 30, "preview_guidance_scale": 4.0, "gradient_checkpointing": True,
                "mixed_precision": "bf16", "base_quantization": "none", "rank": 16},
    "qwen-image": {"max_train_steps": 500, "resolution": 1024, "gradient_accumulation_steps": 4,
                   "preview_inference_steps": 25, "preview_guidance_scale": 4.0, "gradient_checkpointing": True,
                   "mixed_precision": "bf16", "base_quantization": "nf4", "rank": 16},
}
VARIANT_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "flux2-klein": {"base": {"preview_inference_steps": 50, "preview_guidance_scale": 4.0},
                    "distilled": {"preview_inference_steps": 4, "preview_guidance_scale": 1.0}},
    "z-image": {"turbo": {"preview_inference_steps": 8, "preview_guidance_scale": 0.0}},
}
FAMILIES = {name: replace(spec, defaults=RECIPES[name], variant_defaults=VARIANT_RECIPES.get(name, {}))
            for name, spec in FAMILIES.items()}
# Keys older --train-times files used for SD.
ALIASES = {"sd15": "sd", "sd2": "sd"}


def family_named(name: str, where: str = "family") -> FamilySpec:
    spec = FAMILIES.get(ALIASES.get(name, name))
    if spec is None:
        raise FamilyError(f"{where}: unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return spec


def family_id(family: FamilySpec | str, variant: str = "") -> str:
    """The id a family is set by (``--family``, FANOUT_MODEL_FAMILY, LaunchConfig.family):
    ``name``, or ``name/variant`` when a variant is given."""
    name = family if isinstance(family, str) else family.name
    return f"{name}/{variant}" if variant else name


def family_of_index(index: Any, source: str) -> tuple[FamilySpec, str]:
    """(family, variant) of a model_index.json document, as train reads it."""
    if not isinstance(index, Mapping):
        raise FamilyError(f"{source}: expected a JSON object (a diffusers model_index.json)")
    class_name = index.get("_class_name")
    for spec in FAMILIES.values():
        if class_name in spec.class_names:
            return spec, variant_of(spec, index)
    known = "; ".join(f"{s.name}: {', '.join(s.class_names)}" for s in FAMILIES.values())
    raise FamilyError(f"{source}: pipeline class {class_name!r} is not a family this project trains; known: {known}")


def variant_of(spec: FamilySpec, index: Mapping[str, Any]) -> str:
    """The variant model_index.json states (klein: ``is_distilled``; Z-Image: ``_variant``);
    the default one otherwise (train may read more, e.g. a Z-Image model card)."""
    if spec.name == "flux2-klein":
        return "distilled" if index.get("is_distilled") is True else "base"
    stated = str(index.get("_variant", "")).strip().lower()
    return stated if stated in spec.variants else spec.variants[0]


def family_of_folder(folder: str | Path) -> tuple[FamilySpec, str]:
    path = Path(folder) / "model_index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FamilyError(f"{path}: cannot read the base model's model_index.json ({exc}); "
                          f"pass --family ({', '.join(FAMILIES)})") from None
    return family_of_index(index, str(path))


def family_of_s3(s3, model_uri: str) -> tuple[FamilySpec, str]:
    """The family of the pipeline folder at ``model_uri`` (reads its model_index.json, 64 KiB at most)."""
    parsed = urlparse(model_uri)
    key = parsed.path.lstrip("/").rstrip("/") + "/model_index.json" if parsed.path.strip("/") else "model_index.json"
    source = f"s3://{parsed.netloc}/{key}"
    try:
        body = s3.get_object(Bucket=parsed.netloc, Key=key, Range="bytes=0-65535")["Body"].read()
        index = json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise FamilyError(f"{source}: not a JSON model_index.json ({exc})") from None
    except Exception as exc:       # botocore ClientError (NoSuchKey, AccessDenied) and connection errors
        raise FamilyError(f"{source}: cannot read the base model's model_index.json ({exc}); set the family "
                          f"explicitly ({', '.join(FAMILIES)})") from None
    return family_of_index(index, source)


def resolve_family(explicit: str = "", *, folder: str | Path | None = None, s3=None,
                   model_uri: str = "", where: str = "family") -> tuple[FamilySpec, str] | None:
    """The job's family: an explicit id (``name`` or ``name/variant``) wins, then a local
    folder's model_index.json, then the S3 one (when a client is given); None when there is
    nothing to read it from. ``where`` names the explicit setting in errors."""
    if explicit:
        name, _, variant = explicit.partition("/")
        spec = family_named(name, where)
        if variant and variant not in spec.variants:
            raise FamilyError(f"{where} {explicit!r}: {name} variants are {', '.join(v or '(none)' for v in spec.variants)}")
        return spec, variant or spec.variants[0]
    if folder:
        return family_of_folder(folder)
    if s3 is not None and model_uri:
        return family_of_s3(s3, model_uri)
    return None
