"""Does a job's training fit the instance type's GPU memory? Said before anything is paid for (pure).

Each task is estimated with `fanout.demand.memory_gib` over the settings it will train with
(TrainConfig's defaults, the family's defaults, the job's and its own hyperparameters) and held
against the memory of ONE GPU of the type: a slot trains on one GPU, nothing here shards a
model. A refusal names the numbers and the settings that would fit, e.g.

    flux (FLUX.1) at 1024 px, mixed_precision=bf16, base_quantization=none: needs about 32.1 GiB
    of GPU memory (peak while encoding prompts); ml.g5.xlarge has 22.5 GiB per A10G; would fit:
    base_quantization=nf4 (about 11.5 GiB), or ml.g6e.xlarge (1x L40S, 45.0 GiB)

Tasks that share the memory-relevant settings share one verdict, so a 1,000-task list with one
bad job setting gives one line, not a thousand.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from fanout.demand import TaskSettings, memory_gib, task_settings
from fanout.families import FamilySpec
from fanout.instances import INSTANCE_TYPES, InstanceType


def describe(family: FamilySpec, s: TaskSettings) -> str:
    """The settings the estimate rests on, as a user would set them."""
    parts = [f"{family.name} ({family.title}) at {s.resolution} px", f"mixed_precision={s.precision}"]
    if family.quantizable:
        parts.append(f"base_quantization={s.quantization}")
    parts.append(f"gradient_checkpointing={'true' if s.checkpointing else 'false'}")
    if s.batch > 1 or s.prior:
        parts.append(f"batch {s.batch}{' x2 (prior preservation)' if s.prior else ''}")
    if s.text_encoder:
        parts.append("train_text_encoder=true")
    return ", ".join(parts)


def _changes(family: FamilySpec, s: TaskSettings) -> list[tuple[str, TaskSettings]]:
    """Setting changes that lower memory, smallest change first (each one a user could make),
    then the memory-saving ones together for a job that needs more than one."""
    out: list[tuple[str, TaskSettings]] = []
    if s.precision == "no":
        out.append(("mixed_precision=bf16", replace(s, precision="bf16")))
    if family.quantizable and s.quantization != "nf4":
        if s.quantization == "none":
            out.append(("base_quantization=int8", replace(s, quantization="int8")))
        out.append(("base_quantization=nf4", replace(s, quantization="nf4")))
    if not s.checkpointing:
        out.append(("gradient_checkpointing=true", replace(s, checkpointing=True)))
    if s.batch > 1:
        out.append(("train_batch_size=1", replace(s, batch=1)))
    for lower in (768, 512):
        if s.resolution > lower:
            out.append((f"resolution={lower}", replace(s, resolution=lower)))
    together = {"mixed_precision=bf16": {"precision": "bf16"}, "base_quantization=nf4": {"quantization": "nf4"},
                "gradient_checkpointing=true": {"checkpointing": True}}
    names = [name for name, _ in out if name in together]
    if len(names) > 1:
        out.append((" and ".join(names), replace(s, **{k: v for n in names for k, v in together[n].items()})))
    return out


def _bigger_types(need: float, current: InstanceType) -> list[InstanceType]:
    """Types whose GPU holds ``need``: the smallest such GPU, on a one-GPU type where there is
    one (cheapest quoted first), and for a multi-GPU ``current`` one with as many GPUs."""
    fits = sorted((t for t in INSTANCE_TYPES.values() if t.gpu_memory_gib >= need),
                  key=lambda t: (t.gpu_memory_gib, t.price_per_hour is None, t.price_per_hour or 0.0, t.gpus, t.name))
    picks = ([t for t in fits if t.gpus == 1] or fits)[:1]
    same = [t for t in fits if t.gpus == current.gpus and t not in picks][:1] if current.gpus > 1 else []
    return picks + same


def fit_problem(family: FamilySpec, instance: InstanceType, s: TaskSettings) -> str | None:
    """Why training with ``s`` cannot fit one GPU of ``instance`` (None: it fits)."""
    memory = memory_gib(family, s)
    have = instance.gpu_memory_gib
    if memory.need <= have:
        return None
    options = []
    for name, changed in _changes(family, s):
        other = memory_gib(family, changed)
        if other.need <= have:
            options.append(f"{name} (about {other.need:.1f} GiB)")
        if len(options) == 2:
            break
    options += [f"{t.name} ({t.gpus}x {t.gpu.model}, {t.gpu_memory_gib:.1f} GiB)" for t in _bigger_types(memory.need, instance)]
    peak = f"peak while {memory.phase()}"
    return (f"{describe(family, s)}: needs about {memory.need:.1f} GiB of GPU memory ({peak}); {instance.name} has "
            f"{have:.1f} GiB per {instance.gpu.model}; would fit: {', or '.join(options) or 'no instance type this project knows'}")


def job_fit_problems(tasks: Sequence, job_hyperparameters: Mapping[str, Any] | None, family: FamilySpec,
                     instance: InstanceType, config, source: str = "<tasks>") -> list[str]:
    """One problem per group of tasks (same memory-relevant settings) that cannot fit, naming
    the tasks; empty when every task fits."""
    groups: dict[tuple, list] = {}
    settings: dict[tuple, TaskSettings] = {}
    for t in tasks:
        s = task_settings(t, job_hyperparameters, family, config)
        groups.setdefault(s.memory_key(), []).append(t)
        settings[s.memory_key()] = s
    problems = []
    for key, members in groups.items():
        problem = fit_problem(family, instance, settings[key])
        if problem:
            verb = "does" if len(members) == 1 else "do"
            problems.append(f"{source}: {_names(members, len(tasks))} {verb} not fit {instance.name}: {problem}")
    return problems


def task_fit_problem(task, job_hyperparameters: Mapping[str, Any] | None, family: FamilySpec,
                     instance: InstanceType, config) -> str | None:
    """The fit problem of one task (the launcher fails that request alone with it)."""
    return fit_problem(family, instance, task_settings(task, job_hyperparameters, family, config))


def _names(members: Iterable, total: int) -> str:
    members = list(members)
    if len(members) == total and total > 1:
        return f"all {total} tasks"
    shown = ", ".join(repr(t.task_id) for t in members[:5])
    more = f" and {len(members) - 5} more" if len(members) > 5 else ""
    return f"{len(members)} tasks {shown}{more}" if len(members) > 1 else f"task {shown}"
