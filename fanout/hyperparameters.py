"""Hyperparameter names a job or a task may set, checked before anything is paid for.

The container rejects an unknown name too, but only once the instances are up and billing
(a job-level typo) or after the task's turn came (a task-level one). fanout cannot import
train, so it keeps a copy of the names; tests/container/test_taskconfig.py keeps the copy
equal to ``train.config.HYPERPARAMETER_NAMES`` and the container's own names.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

# train.config.HYPERPARAMETER_NAMES: how one LoRA trains (job-wide defaults, per-task overrides).
TRAINING_NAMES = frozenset({
    "adam_weight_decay", "center_crop", "checkpoint_every", "checkpoints_total_limit", "class_inference_steps",
    "export", "export_check", "gradient_accumulation_steps", "gradient_checkpointing", "learning_rate",
    "log_every", "lora_alpha", "lr_scheduler", "lr_warmup_steps", "max_grad_norm", "max_image_pixels",
    "max_train_steps", "min_images", "mixed_precision", "noise_offset", "num_class_images",
    "num_preview_images", "optimizer", "preview_every", "preview_guidance_scale", "preview_inference_steps",
    "prior_loss_weight", "random_flip", "rank", "resolution", "resume", "save_dtype", "seed", "snr_gamma",
    "train_batch_size", "train_text_encoder",
    "lora_target_modules",
    "weighting_scheme", "logit_mean", "logit_std", "mode_scale", "guidance_scale", "base_quantization",
})
# How the job runs (container.settings.ContainerConfig): job-wide only.
CONTAINER_NAMES = frozenset({"on_task_failure", "network_isolation", "gpus_per_host"})
# Names the SageMaker SDK adds on its own (sagemaker_program, sagemaker_region, ...).
SDK_PREFIX = "sagemaker_"


def job_name_problems(values: Mapping[str, Any], where: str = "job hyperparameters") -> list[str]:
    unknown = sorted(k for k in values if k not in TRAINING_NAMES | CONTAINER_NAMES and not k.startswith(SDK_PREFIX))
    return [f"{where}: unknown name(s) {', '.join(unknown)}; valid: {', '.join(sorted(TRAINING_NAMES | CONTAINER_NAMES))}"] if unknown else []


def task_name_problems(tasks: Iterable, source: str = "<tasks>") -> list[str]:
    """One problem per task whose own ``hyperparameters`` name something no task may set."""
    problems = []
    for t in tasks:
        unknown = sorted(set(t.hyperparameters) - TRAINING_NAMES)
        if unknown:
            job_wide = [n for n in unknown if n in CONTAINER_NAMES]
            hint = f" ({', '.join(job_wide)} is job-wide: set it in the job's hyperparameters)" if job_wide else ""
            problems.append(f"{source}:{t.line}: task {t.task_id!r} field 'hyperparameters': unknown name(s) "
                            f"{', '.join(unknown)}{hint}; valid: {', '.join(sorted(TRAINING_NAMES))}")
    return problems


# -- values: the same types and ranges train.config.TrainConfig applies -----------------------
# A bad value would otherwise fail the task only inside the running, billed job. fanout cannot
# import train, so the rules are copied; tests/container/test_hyperparameter_rules.py runs
# both over the same sample values and requires the same verdict for each.
TRAINING_TYPES: dict[str, type] = {
    **dict.fromkeys(("checkpoint_every", "checkpoints_total_limit", "class_inference_steps",
                     "gradient_accumulation_steps", "log_every", "lr_warmup_steps", "max_image_pixels",
                     "max_train_steps", "min_images", "num_class_images", "num_preview_images", "preview_every",
                     "preview_inference_steps", "rank", "resolution", "seed", "train_batch_size"), int),
    **dict.fromkeys(("adam_weight_decay", "learning_rate", "lora_alpha", "max_grad_norm", "noise_offset",
                     "preview_guidance_scale", "prior_loss_weight", "snr_gamma",
                     "logit_mean", "logit_std", "mode_scale", "guidance_scale"), float),
    **dict.fromkeys(("center_crop", "export_check", "gradient_checkpointing", "random_flip", "resume",
                     "train_text_encoder"), bool),
    **dict.fromkeys(("export", "lr_scheduler", "mixed_precision", "optimizer", "save_dtype",
                     "lora_target_modules", "weighting_scheme", "base_quantization"), str),
}
OPTIONAL_NAMES = frozenset({"lora_alpha", "snr_gamma"})          # unset (null, "", "none") turns them off
CHOICES: dict[str, tuple[str, ...]] = {
    "lr_scheduler": ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "optimizer": ("adamw", "adamw8bit", "prodigy"),
    "save_dtype": ("fp32", "fp16", "bf16"),
    "weighting_scheme": ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"),
    "base_quantization": ("none", "nf4", "int8"),
}
EXPORT_FORMATS = ("lora", "kohya", "merged-fp16", "merged-int8", "merged-nf4", "merged-bnb8", "onnx", "mme", "triton")
AT_LEAST_ONE = frozenset({"max_train_steps", "rank", "resolution", "train_batch_size", "gradient_accumulation_steps",
                          "num_preview_images", "preview_inference_steps", "class_inference_steps", "min_images",
                          "max_image_pixels", "checkpoints_total_limit", "log_every"})
AT_LEAST_ZERO = frozenset({"lr_warmup_steps", "adam_weight_decay", "max_grad_norm", "noise_offset", "prior_loss_weight",
                           "preview_every", "checkpoint_every", "seed", "preview_guidance_scale"})
ABOVE_ZERO = frozenset({"learning_rate", "lora_alpha", "snr_gamma"})


def _unquote(value: str) -> str:
    """One layer of the SageMaker SDK's JSON quoting: '"400"' -> '400'."""
    s = value.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        try:
            decoded = json.loads(s)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def decode_value(name: str, value: Any) -> Any:
    """A hyperparameter's typed value from JSON or SageMaker's strings; ValueError if it has none."""
    kind = TRAINING_TYPES[name]
    if isinstance(value, str):
        value = _unquote(value)
        if name in OPTIONAL_NAMES and value.strip().lower() in ("", "none", "null"):
            return None
    elif value is None:
        if name in OPTIONAL_NAMES:
            return None
        raise ValueError("must not be empty")
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return word in ("true", "1", "yes", "on")
        raise ValueError(f"{value!r} is not a boolean (true/false)")
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a {'integer' if kind is int else 'number'}")
    try:
        number = value if isinstance(value, int) else float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a {'integer' if kind is int else 'number'}") from None
    if isinstance(number, float) and (not math.isfinite(number) or (kind is int and number != int(number))):
        raise ValueError(f"{value!r} is not a {'whole' if kind is int else 'finite'} number")
    return int(number) if kind is int else float(number)


def value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for ``name`` (None: valid), in train.config's terms."""
    try:
        typed = decode_value(name, value)
    except ValueError as exc:
        return f"{name}: {exc}"
    if typed is None:
        return None
    if name in CHOICES and typed not in CHOICES[name]:
        return f"{name}: {typed!r} is not one of {', '.join(CHOICES[name])}"
    if name == "export":
        unknown = [f for f in (n.strip() for n in typed.split(",")) if f and f not in EXPORT_FORMATS]
        shown = ", ".join(f if len(f) <= 40 else f[:37] + "..." for f in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        return f"export: unknown format(s) {shown}; valid: {', '.join(EXPORT_FORMATS)}" if unknown else None
    if name in AT_LEAST_ONE and typed < 1:
        return f"{name}: must be at least 1, got {typed}"
    if name in AT_LEAST_ZERO and typed < 0:
        return f"{name}: must be 0 or more, got {typed}"
    if name in ABOVE_ZERO and not typed > 0:
        return f"{name}: must be greater than 0, got {typed}"
    if name == "resolution" and typed % 8:
        return f"resolution: must be a multiple of 8, got {typed}"
    return None


def job_value_problems(values: Mapping[str, Any], where: str = "job hyperparameters") -> list[str]:
    """One problem per bad value of a job-wide training setting (names already checked)."""
    return [f"{where}: {p}" for n, v in sorted(values.items()) if n in TRAINING_TYPES and (p := value_problem(n, v))]


def task_value_problems(tasks: Iterable, source: str = "<tasks>", job_values: Mapping[str, Any] | None = None) -> list[str]:
    """One problem per bad value of a task's own ``hyperparameters`` (names already checked);
    with ``job_values``, also what only the combination breaks (num_class_images with a class prompt)."""
    problems = []
    for t in tasks:
        where = f"{source}:{t.line}: task {t.task_id!r} field 'hyperparameters'"
        found = [p for n, v in sorted(t.hyperparameters.items()) if n in TRAINING_TYPES and (p := value_problem(n, v))]
        merged = {**(job_values or {}), **t.hyperparameters}
        if not found and t.class_prompt and not value_problem("num_class_images", merged.get("num_class_images", 1)):
            if decode_value("num_class_images", merged.get("num_class_images", 1)) < 1:
                found.append("num_class_images: must be at least 1 with a class prompt")
        problems.extend(f"{where}: {p}" for p in found)
    return problems
