"""Hyperparameter names a job or a task may set, checked before anything is paid for.

The container rejects an unknown name too, but only once the instances are up and billing
(a job-level typo) or after the task's turn came (a task-level one). fanout cannot import
train, so it keeps a copy of the names; tests/container/test_taskconfig.py keeps the copy
equal to ``train.config.HYPERPARAMETER_NAMES`` and the container's own names.
"""

from __future__ import annotations

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
CONTAINER_NAMES = frozenset({"on_task_failure", "network_isolation"})
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
