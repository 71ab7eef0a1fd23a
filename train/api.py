"""What callers outside ``train`` use: one typed interface (``Trainer``) and the real one.

The container's warm worker holds a ``Trainer``: it checks each task's config against the
base model's family before anything loads (filling what a task leaves unset from the family's
recipe) and screens the task's photos, loads the base once per host (and the scorer models of
the evaluation, when the job has them), and runs the tasks on it. ``LocalTrainer`` is train's
own; the container's orchestration tests pass a stand-in with the same methods. Importing this
module is light (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from train.config import TrainConfig

if TYPE_CHECKING:  # heavy modules: only for the annotations
    from train.pipeline import BaseModel
    from train.quality.models import Scorers
    from train.task import TaskResult


class Trainer(Protocol):
    def check_config(self, cfg: TrainConfig, model_dir: Path, *, source: str) -> TrainConfig | None:
        """Raise ConfigError when ``cfg`` asks for something the base's family cannot do; return
        the config to train with: ``cfg`` with the family's recipe for every setting it leaves
        unset (train.recipes), or None to train ``cfg`` as it is."""

    def screen(self, cfg: TrainConfig, *, task_id: str) -> Mapping[str, Any] | None:
        """Screen the task's photos before the base model is touched (train.screen): the
        ``screening`` record, or None with ``screen=off``. Raises ScreeningError (its
        ``status_fields`` hold the record) when the task cannot train on them, DataError for a
        photo that cannot be read."""

    def load_base(self, model_dir: Path) -> "BaseModel":
        """Load the base pipeline folder once; every task of the host reuses it."""

    def run_task(self, base: "BaseModel", cfg: TrainConfig, *, model_dir: Path, checkpoint_dir: Path,
                 class_cache_dir: Path | None, stop_requested: Callable[[], bool], task_id: str,
                 status_extra: Mapping[str, Any] | None, scorers: "Scorers | None" = None) -> "TaskResult":
        """Train, preview, evaluate (with ``scorers``) and export one task (train.task.run_task);
        base is left clean."""

    def check_scorers(self, eval_dir: Path, *, source: str) -> None:
        """Raise ConfigError naming ``source`` and the folder when the scorer folder cannot work."""

    def load_scorers(self, eval_dir: Path) -> "Scorers":
        """Load the scorer models once per host, on the CPU (they visit the GPU only to score)."""


@dataclass(frozen=True)
class LocalTrainer:
    """train's own Trainer, in this process."""

    mixed_precision: str = "no"   # the job's (recipe resolved): the base model is loaded once, in this precision
    base_quantization: str = "none"  # the job's (recipe resolved): nf4/int8 quantize the base once, when it loads
    quiet_progress_bars: bool = True

    def check_config(self, cfg: TrainConfig, model_dir: Path, *, source: str) -> TrainConfig:
        from train.families import check_for_model
        from train.recipes import resolve_for_model

        check_for_model(cfg, model_dir, source=source)
        return resolve_for_model(cfg, model_dir)

    def screen(self, cfg: TrainConfig, *, task_id: str) -> Mapping[str, Any] | None:
        from train.errors import DataError, TrainError
        from train.screen import screen_task

        try:
            screening = screen_task(cfg)
        except TrainError:
            raise
        except Exception as exc:  # a folder or file the OS refuses: this task's error, not the host's
            raise DataError(f"task {task_id!r}: screening its photos failed ({type(exc).__name__}: {exc})") from exc
        return screening.to_dict() if screening is not None else None

    def load_base(self, model_dir: Path) -> "BaseModel":
        from train.pipeline import load_base

        if self.quiet_progress_bars:  # the step lines are the progress; loading bars only clutter logs
            from train.cli import quiet_library_progress_bars

            quiet_library_progress_bars()
        return load_base(model_dir, mixed_precision=self.mixed_precision, base_quantization=self.base_quantization)

    def run_task(self, base: "BaseModel", cfg: TrainConfig, *, model_dir: Path, checkpoint_dir: Path,
                 class_cache_dir: Path | None, stop_requested: Callable[[], bool], task_id: str,
                 status_extra: Mapping[str, Any] | None, scorers: "Scorers | None" = None) -> "TaskResult":
        from train.task import run_task

        return run_task(base, cfg, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                        class_cache_dir=class_cache_dir, stop_requested=stop_requested, task_id=task_id,
                        status_extra=status_extra, scorers=scorers)

    def check_scorers(self, eval_dir: Path, *, source: str) -> None:
        from train.quality import check_eval_models

        check_eval_models(eval_dir, source=source)

    def load_scorers(self, eval_dir: Path) -> "Scorers":
        from train.quality import load_scorers

        return load_scorers(eval_dir)
