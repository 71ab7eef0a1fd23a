"""What one task asks of a GPU: the settings it trains with, its seconds, its GPU memory (pure).

The plan (cost units), the simulator (seconds) and the fit check (GiB) all read a task through
`task_settings`, so they agree on which value wins: TrainConfig's defaults (mirrored in
`fanout.plan.PlanConfig`) < the family's `defaults` (the recipe hook) < job hyperparameters <
the task's own. Values are read the way SageMaker sends them ("400", "\\"400\\""); an unreadable
one falls back to the default here, since the hyperparameter checks report it by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from fanout.families import SAMPLING_SHARE, FamilySpec

# What the CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's slack take on top
# of tensors (assumption: ~0.3-0.5 GiB of context as nvidia-smi shows it, plus fragmentation).
OVERHEAD_GIB = 1.0
# Bytes per parameter of a frozen weight: bitsandbytes NF4 stores 4 bits plus one absmax per
# 64 weights (double-quantized) and leaves non-Linear layers in 16 bit; LLM.int8 one byte plus
# row scales (assumption, matching "41 GB bf16 -> ~11 GB NF4" for Qwen-Image's transformer).
WEIGHT_BYTES = {"no": 4.0, "fp16": 2.0, "bf16": 2.0, "nf4": 0.55, "int8": 1.05}
# LoRA parameters per unit of rank per billion base parameters: FLUX.1's 11.9 B transformer has
# 4.67 M at rank 4 on its attention projections (HF blog 'flux-qlora'). Each trains with an fp32
# weight, gradient and two Adam moments: 16 bytes.
LORA_PARAMS_PER_RANK_PER_B = 4.67e6 / (4 * 11.9)
LORA_STATE_BYTES = 16
TEXT_ENCODER_ACTIVATIONS = 1.15     # the text encoder's own activations with train_text_encoder (assumption)
GIB = 1024 ** 3


def read_value(raw: Any, kind: type, default: Any) -> Any:
    """A hyperparameter as SageMaker may send it ("400", "\\"400\\"", 400); default if unreadable."""
    value = raw
    if isinstance(value, str):
        try:
            value = json.loads(value)
            if isinstance(value, str):
                value = json.loads(value) if value[:1] in '0123456789-tf' else value
        except (json.JSONDecodeError, ValueError):
            pass
    if raw is None:
        return default
    if kind is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind is str:
        return value.strip().lower() if isinstance(value, str) else default
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class TaskSettings:
    """The settings of one task that decide its time and its GPU memory."""

    steps: int
    resolution: int
    batch: int
    accumulation: int
    preview_every: int
    preview_images: int
    preview_steps: int
    preview_guidance: float
    text_encoder: bool
    checkpointing: bool
    precision: str          # mixed_precision: no | fp16 | bf16 (the frozen weights' dtype too)
    quantization: str       # base_quantization: none | nf4 | int8
    rank: int
    prior: bool             # prior preservation: class images double the batch
    prompts: int            # preview prompts

    def memory_key(self) -> tuple:
        """What the GPU memory depends on (tasks that share it share one fit verdict)."""
        return (self.resolution, self.batch, self.prior, self.text_encoder, self.checkpointing,
                self.precision, self.quantization, self.rank)


_NAMES = {"steps": ("max_train_steps", int), "resolution": ("resolution", int), "batch": ("train_batch_size", int),
          "accumulation": ("gradient_accumulation_steps", int), "preview_every": ("preview_every", int),
          "preview_images": ("num_preview_images", int), "preview_steps": ("preview_inference_steps", int),
          "preview_guidance": ("preview_guidance_scale", float), "text_encoder": ("train_text_encoder", bool),
          "checkpointing": ("gradient_checkpointing", bool), "precision": ("mixed_precision", str),
          "quantization": ("base_quantization", str), "rank": ("rank", int)}
_FLOORS = {"steps": 0, "resolution": 8, "batch": 1, "accumulation": 1, "preview_images": 0, "preview_steps": 1, "rank": 1}


def task_settings(task, job_hyperparameters: Mapping[str, Any] | None, family: FamilySpec, config,
                  variant: str = "") -> TaskSettings:
    """``task``'s settings: ``config``'s defaults (TrainConfig's, via PlanConfig), then the
    family's recipe (of ``variant``), then the job's, then the task's own hyperparameters."""
    merged = {**family.defaults_for(variant), **(job_hyperparameters or {}), **task.hyperparameters}
    values: dict[str, Any] = {}
    for field_name, (name, kind) in _NAMES.items():
        default = getattr(config, name)
        value = read_value(merged.get(name), kind, default)
        if field_name in _FLOORS:
            value = max(_FLOORS[field_name], value)
        values[field_name] = value
    if values["precision"] not in WEIGHT_BYTES or values["precision"] in ("nf4", "int8"):
        values["precision"] = config.mixed_precision
    if values["quantization"] not in ("none", "nf4", "int8") or not family.quantizable:
        values["quantization"] = "none"
    values["text_encoder"] = values["text_encoder"] and family.trains_text_encoder
    return TaskSettings(**values, prior=bool(task.class_prompt), prompts=max(1, len(task.validation_prompts)))


def micro_step_seconds(family: FamilySpec, s: TaskSettings, step_table=None, prior_factor: float = 2.0,
                       text_encoder_factor: float = 1.35) -> float:
    """Seconds of one optimizer step on an A10G: micro-steps x batch, prior and text-encoder factors."""
    step = family.step_seconds(s.resolution, step_table) * s.batch * s.accumulation
    step *= prior_factor if s.prior else 1.0
    return step * (text_encoder_factor if s.text_encoder else 1.0)


def preview_seconds(family: FamilySpec, variant: str, s: TaskSettings, step_table=None) -> float:
    """Seconds of every preview image of the task on an A10G (sampling steps x forward passes)."""
    rounds = s.steps // s.preview_every if s.preview_every > 0 else 0
    sampling = family.step_seconds(s.resolution, step_table) * SAMPLING_SHARE
    sampling *= 2.0 if family.uses_cfg(variant, s.preview_guidance) else 1.0
    return rounds * s.prompts * s.preview_images * s.preview_steps * sampling


@dataclass(frozen=True)
class Memory:
    """Peak GPU memory of one task, GiB, and in which phase it peaks."""

    need: float
    train: float            # while the denoiser trains
    encode: float           # while an offloaded text encoder is on the GPU to encode prompts

    def phase(self) -> str:
        return "encoding prompts" if self.encode > self.train else "training"


def _weight_bytes(component, s: TaskSettings) -> float:
    if component.quantized and s.quantization != "none":
        return WEIGHT_BYTES[s.quantization]
    return WEIGHT_BYTES[s.precision]


def memory_gib(family: FamilySpec, s: TaskSettings) -> Memory:
    """Estimated peak GPU memory of training one task of ``family`` with settings ``s``."""
    resident, visiting = {}, {}
    for c in family.components:
        gib = c.params_b * 1e9 * _weight_bytes(c, s) / GIB
        on_gpu = c.placement == "gpu" or (c.placement == "offloaded_unless_quantized" and c.quantized
                                          and s.quantization != "none")
        (resident if on_gpu else visiting)[c.name] = gib
    lora = LORA_PARAMS_PER_RANK_PER_B * s.rank * family.denoiser.params_b * LORA_STATE_BYTES / GIB
    active = family.activation_gib[0 if s.checkpointing else 1] * (s.resolution / family.native_resolution) ** 2
    active *= s.batch * (2 if s.prior else 1) * (2.0 if s.precision == "no" else 1.0)
    active *= TEXT_ENCODER_ACTIVATIONS if s.text_encoder else 1.0
    base = OVERHEAD_GIB + sum(resident.values()) + lora
    train, encode = base + active, base + max(visiting.values(), default=0.0)
    return Memory(round(max(train, encode), 1), round(train, 1), round(encode, 1))
