"""run_task: train one DreamBooth LoRA on a loaded base model (placeholder; being written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from train.config import TrainConfig
from train.pipeline import BaseModel


@dataclass
class TaskResult:
    state: str                         # "completed" | "failed"
    step: int
    loss: float | None
    seconds: float
    error: str | None = None


def run_task(base: BaseModel, cfg: TrainConfig, *, model_dir: Path, checkpoint_dir: Path,
             class_cache_dir: Path | None = None,
             stop_requested: Callable[[], bool] = lambda: False,
             task_id: str = "task", status_extra: Mapping[str, Any] | None = None) -> TaskResult:
    raise NotImplementedError
