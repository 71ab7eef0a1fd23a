"""One task's TrainConfig, built from the job, the task and the channels.

Precedence, lowest first: TrainConfig defaults < job hyperparameters < the task's own
``hyperparameters`` < the fields the task list and channels fix (paths and prompts). Paths
from a task list are untrusted input: each one is resolved inside its channel and rejected
when it escapes it, so no task can read or write outside its own folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from container.errors import TaskPathError
from container.settings import CONTAINER_HYPERPARAMETER_NAMES
from fanout.redaction import shown

if TYPE_CHECKING:
    from fanout.tasks import TaskSpec
    from train.config import TrainConfig


def resolve_in(root: Path, relative: str, *, what: str) -> Path:
    """``root/relative`` resolved (symlinks too), refused when it lands outside ``root``."""
    if not isinstance(relative, str) or not relative.strip():
        raise TaskPathError(f"{what} is empty; give a folder relative to the channel")
    if os.path.isabs(relative) or relative.startswith("~"):
        raise TaskPathError(f"{what}={shown(relative)} must be relative to its channel, not an absolute path")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise TaskPathError(f"{what}={shown(relative)} points outside its channel ({root})")
    return target


def split_hyperparameters(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(container-level, training) halves of the job hyperparameters."""
    container = {k: v for k, v in raw.items() if k in CONTAINER_HYPERPARAMETER_NAMES}
    training = {k: v for k, v in raw.items() if k not in CONTAINER_HYPERPARAMETER_NAMES}
    return container, training


def check_names(values: Mapping[str, Any], allowed: frozenset[str], *, source: str) -> None:
    """Unknown names -> ConfigError listing the valid ones (the message says where they came from)."""
    from train.hyperparameters import reject_unknown

    hint = ""
    container_level = sorted(n for n in set(values) - allowed if n in CONTAINER_HYPERPARAMETER_NAMES)
    if container_level:
        hint = f" ({', '.join(container_level)} is job-wide: set it in the job's hyperparameters)"
    reject_unknown(values, allowed, source=source, what="hyperparameter", hint=hint)


def job_train_config(training_hp: Mapping[str, Any], *, source: str = "hyperparameters.json"):
    """Validate the job's training hyperparameters before any model loads (ConfigError if bad)."""
    from train.config import HYPERPARAMETER_NAMES, TrainConfig

    check_names(training_hp, HYPERPARAMETER_NAMES | CONTAINER_HYPERPARAMETER_NAMES, source=source)
    return TrainConfig.from_dict(dict(training_hp), source=source)


def task_train_config(
    task: "TaskSpec",
    *,
    job_hp: Mapping[str, Any],
    model_channel: Path,
    images_channel: Path | None,
    class_channel: Path | None,
    instance_data_dir: Path | None = None,
    output_dir: Path,
) -> "TrainConfig":
    """The TrainConfig of one task (raises ConfigError or TaskPathError: the task fails).

    ``instance_data_dir`` replaces the images channel lookup when the data came from
    elsewhere (an s3:// instance_data downloaded for this task).
    """
    from train.config import HYPERPARAMETER_NAMES, TrainConfig

    source = f"task {task.task_id!r} (line {task.line})"
    overrides = dict(task.hyperparameters or {})
    check_names(overrides, HYPERPARAMETER_NAMES, source=f"{source} field 'hyperparameters'")
    if instance_data_dir is None:
        if images_channel is None:
            raise TaskPathError(f"{source}: the job has no 'images' channel to find instance_data in")
        instance_data_dir = resolve_in(images_channel, task.instance_data, what=f"{source}: instance_data")
    fixed: dict[str, Any] = {
        "pretrained_model": str(model_channel),
        "instance_data": str(instance_data_dir),
        "instance_prompt": task.instance_prompt,
        "output_dir": str(output_dir),
        # A restarted job finds the interrupted task's state in its checkpoint folder.
        "resume": True,
    }
    if task.class_prompt is not None:
        fixed["class_prompt"] = task.class_prompt
    if task.class_data is not None:
        if class_channel is None:
            raise TaskPathError(f"{source}: class_data is set but the job has no 'class' channel")
        fixed["class_data"] = str(resolve_in(class_channel, task.class_data, what=f"{source}: class_data"))
    if task.validation_prompts:
        fixed["validation_prompts"] = tuple(task.validation_prompts)
    known = _field_names(TrainConfig)
    values = {**job_hp, **overrides, **{k: v for k, v in fixed.items() if k in known}}
    return TrainConfig.from_dict(values, source=source)


def _field_names(cls) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(cls)}
