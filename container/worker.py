"""The warm worker of one slot: one base pipeline per slot process, one task at a time.

A host runs one worker per slot (one per GPU, ``container.host``); each lives in its own
process (``container.slots``) and keeps its own base model loaded. For each task the host
hands it:

    delivered before (restart)?  -> put its final artifacts back, no training
    build its TrainConfig        -> a bad field, path or hyperparameter fails only this task
    screen its photos            -> a task screening refuses fails alone, before the base loads
    load the base (first time)   -> once per slot process, reused by every task it runs (the
                                    scorer models of channel 'eval' too, when the job has it)
    run_task                     -> fresh LoRA, train, previews, evaluation, export, status.json, detach
    completed                    -> keep a copy in the checkpoint folder, upload to output_uri

A task failure is recorded (status.json, the outcome the host puts in summary.json) and the
slot takes the next task. A stop request (SIGTERM) makes run_task save state and return.
Per-process state lives on the Worker: the base model (``_base``), the S3 client
(``transfer``), the load counters and ``device_fault`` (set after a CUDA fault: this process
must not run another task). Per-task hooks belong in ``_run_one`` / ``_train``.

Training is reached through one typed interface, ``train.api.Trainer`` (check a task's
config against the base's family, load the base, run a task): the entry point passes train's
``LocalTrainer``, the orchestration tests pass a stand-in.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from container.env import SageMakerEnv
from container.errors import ContainerError, TaskPathError, TaskSpecError
from container.faults import is_device_fault
from container.final import final_is_complete, keep_final, restore_final
from container.pages import task_log, write_task_page
from container.quality import ScorerModelsLoadError, load_scorer_models, task_verdict
from container.records import STATUS_FILE, TaskOutcome, now_iso, read_status, task_status_extra, write_failed_status
from container.s3 import S3TransferError
from container.settings import ContainerConfig
from container.taskconfig import task_train_config
from train.timings import record_phase

if TYPE_CHECKING:
    from fanout.tasks import TaskSpec
    from train.api import Trainer
    from train.config import TrainConfig

log = logging.getLogger("container.worker")

# Under the checkpoint prefix so a restarted host gets its generated class images back; one
# folder per host so hosts never write the same key. Task ids start with [A-Za-z0-9], so a
# name starting with "_" can never be a task's folder.
CLASS_CACHE = "_class-cache"


class BaseModelError(ContainerError):
    """The base pipeline (channel 'model') could not be loaded: no task on this host can run."""


@dataclass
class Worker:
    env: SageMakerEnv
    settings: ContainerConfig
    job_hp: Mapping[str, Any]  # training hyperparameters of the job, raw (strings)
    trainer: "Trainer"
    stop_requested: Callable[[], bool] = lambda: False
    mixed_precision: str = "no"  # the job's (recipe resolved): the base model is loaded once, in this precision
    transfer: Any = None  # container.s3.TaskTransfer, made on first use
    rejected: Mapping[str, str] = field(default_factory=dict)  # task_id -> why its own fields are bad
    slot: int = 0  # which slot of the host this worker is (recorded per task)
    base_model_loads: int = 0
    base_model_seconds: float = 0.0
    device_fault: str | None = None  # a CUDA fault broke this process: the host must start a new one
    on_base_loaded: Callable[[], None] | None = None  # tells the host at once (a slot may die mid-task)
    _base: Any = field(default=None, repr=False)
    _scorers: Any = field(default=None, repr=False)

    # -- one task -------------------------------------------------------------------------

    def run_one(self, task: "TaskSpec") -> TaskOutcome:
        """One task from the host's queue (the slot's loop calls this; BaseModelError escapes)."""
        return self._run_one(task)

    def _run_one(self, task: "TaskSpec") -> TaskOutcome:
        model_dir = self.env.model_dir / task.task_id
        checkpoint_dir = self.env.checkpoint_dir / task.task_id
        outcome = TaskOutcome(task_id=task.task_id, outcome="failed", started_at=now_iso(), user_id=task.user_id,
                              slot=self.slot)
        t0 = time.monotonic()
        loads_before = self.base_model_seconds
        with task_log() as tail:  # the page of a failed task shows the lines before its error
            try:
                if final_is_complete(checkpoint_dir) and _status_state(checkpoint_dir) == "completed":
                    self._restore(task, model_dir, checkpoint_dir, outcome)
                else:
                    self._train(task, model_dir, checkpoint_dir, outcome)
            finally:
                # The one-time base model load is the slot's cost, not this task's (summary has it).
                loaded = self.base_model_seconds - loads_before
                outcome.seconds = round(time.monotonic() - t0 - loaded, 3)
                outcome.finished_at = now_iso()
        write_task_page(checkpoint_dir, tail, outcome)  # checkpoints/<task>/report.html, whatever the state
        return outcome

    def _restore(self, task: "TaskSpec", model_dir: Path, checkpoint_dir: Path, outcome: TaskOutcome) -> None:
        """A task an earlier run of this job already delivered: no retraining."""
        files = restore_final(checkpoint_dir, model_dir)
        status = read_status(checkpoint_dir) or {}
        outcome.outcome = "restored"
        outcome.step = int(status.get("step", 0) or 0)
        outcome.loss = status.get("loss")
        outcome.verdict = task_verdict(status)
        outcome.model_dir = str(model_dir)
        log.info("task %s was completed by an earlier run: %d files restored to %s", task.task_id, len(files), model_dir)
        if task.output_uri and not (checkpoint_dir / UPLOADED).exists():
            self._upload(task, model_dir, checkpoint_dir, outcome)

    def _train(self, task: "TaskSpec", model_dir: Path, checkpoint_dir: Path, outcome: TaskOutcome) -> None:
        from train.errors import Interrupted, TrainError

        extra = self._status_extra(task)
        try:
            cfg = self._task_config(task, model_dir)
            self.trainer.screen(cfg, task_id=task.task_id)  # photos screening refuses fail before the base loads
        except (TrainError, ContainerError) as exc:
            self._fail(outcome, checkpoint_dir, str(exc), {**extra, **getattr(exc, "status_fields", {})})
            return
        try:
            base = self._base_model()
        except ScorerModelsLoadError as exc:
            raise BaseModelError(str(exc)) from exc
        except Exception as exc:
            raise BaseModelError(f"base model in channel 'model' failed to load: {exc}") from exc
        if self.stop_requested():  # the stop came while the model loaded: nothing to save yet
            outcome.outcome, outcome.error = "interrupted", "stop requested before training started"
            return
        model_dir.mkdir(parents=True, exist_ok=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # Scorers only when the job has them: a Trainer without evaluation keeps its old signature.
        scoring = {"scorers": self._scorers} if self._scorers is not None else {}
        try:
            result = self.trainer.run_task(
                base, cfg, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                class_cache_dir=self.env.checkpoint_dir / CLASS_CACHE / self.env.current_host,
                stop_requested=self.stop_requested, task_id=task.task_id, status_extra=extra, **scoring,
            )
        except Interrupted as exc:
            outcome.outcome = "interrupted"
            outcome.error = str(exc) or "stop requested; state saved"
            # run_task wrote "interrupted" in status.json itself (train owns that file)
            status = read_status(checkpoint_dir) or {}
            outcome.step = int(status.get("step", 0) or 0)
            return
        except TrainError as exc:
            self._fail(outcome, checkpoint_dir, str(exc), extra, status_written=True)
            return
        except Exception as exc:  # one task's crash must not take the other users' LoRAs down
            log.error("task %s crashed:\n%s", task.task_id, traceback.format_exc())
            self._fail(outcome, checkpoint_dir, f"unexpected {type(exc).__name__}: {exc}", extra, status_written=True)
            if is_device_fault(exc):  # this process's CUDA context is gone: no further task here
                self.device_fault = outcome.error
            return
        finally:
            _free_memory()
        outcome.step, outcome.loss = result.step, result.loss
        if result.state != "completed":
            error = result.error or f"run_task ended in state {result.state!r}"
            self._fail(outcome, checkpoint_dir, error, extra, status_written=True)
            return
        outcome.outcome = "completed"
        outcome.verdict = task_verdict(read_status(checkpoint_dir))
        outcome.model_dir = str(model_dir)
        # Which slot ran it is the host's business (summary, status): the deliverable is the same.
        _carry_into_manifest(model_dir / "manifest.json", {k: v for k, v in extra.items() if k != "slot"})
        keep_final(model_dir, checkpoint_dir)
        if task.output_uri:
            self._upload(task, model_dir, checkpoint_dir, outcome)

    def _task_config(self, task: "TaskSpec", model_dir: Path) -> "TrainConfig":
        if task.task_id in self.rejected:
            raise TaskSpecError(self.rejected[task.task_id])
        env = self.env
        model_channel = env.channel("model")
        if model_channel is None:
            raise BaseModelError("the job has no 'model' channel (a diffusers pipeline folder)")
        data_dir = None
        if str(task.instance_data).startswith("s3://"):
            data_dir = self._download_instance_data(task)
        cfg = task_train_config(
            task, job_hp=self.job_hp, model_channel=model_channel,
            images_channel=env.channel("images"), class_channel=env.channel("class"),
            instance_data_dir=data_dir, output_dir=model_dir,
        )
        # Settings and formats the base's family cannot use fail this task before any model loads;
        # what neither the task nor the job sets comes from the family's recipe.
        cfg = self.trainer.check_config(cfg, model_channel, source=f"task {task.task_id!r}") or cfg
        if cfg.mixed_precision != self.mixed_precision:
            from train.errors import ConfigError

            raise ConfigError(
                f"task {task.task_id!r}: hyperparameter mixed_precision={cfg.mixed_precision!r} differs from the "
                f"job's {self.mixed_precision!r}; the base model is loaded once per host, so set it for the job"
            )
        return cfg

    def _download_instance_data(self, task: "TaskSpec") -> Path:
        if self.settings.network_isolation:
            raise TaskPathError(
                f"task {task.task_id!r}: instance_data {task.instance_data} is an s3:// URI but the job runs "
                "with network isolation; put the images in the 'images' channel instead"
            )
        target = self.env.base_dir / "input" / "s3" / task.task_id
        if target.exists():
            shutil.rmtree(target)
        try:
            n = self._transfer().download_prefix(task.instance_data, target)
        except S3TransferError as exc:
            raise TaskPathError(f"task {task.task_id!r}: instance_data: {exc}") from exc
        log.info("task %s: downloaded %d files from %s", task.task_id, n, task.instance_data)
        return target

    def _upload(self, task: "TaskSpec", model_dir: Path, checkpoint_dir: Path, outcome: TaskOutcome) -> None:
        if self.settings.network_isolation:
            outcome.error = f"output_uri {task.output_uri} not uploaded: the job runs with network isolation"
            log.warning("task %s: %s", task.task_id, outcome.error)
            return
        t0 = time.monotonic()
        try:
            keys = self._transfer().upload_folder(model_dir, task.output_uri)
            record_phase(checkpoint_dir / STATUS_FILE, "upload", time.monotonic() - t0)
        except S3TransferError as exc:
            # The LoRA still reaches model.tar.gz; the summary says what the consumer missed.
            outcome.error = str(exc)
            log.error("task %s: %s", task.task_id, exc)
            return
        outcome.uploaded_to = task.output_uri
        (checkpoint_dir / UPLOADED).write_text(task.output_uri + "\n")
        log.info("task %s: uploaded %d files to %s (manifest last)", task.task_id, len(keys), task.output_uri)

    def _fail(self, outcome: TaskOutcome, checkpoint_dir: Path, error: str, extra: Mapping[str, Any],
              *, status_written: bool = False) -> None:
        """Record a failed task. run_task writes its own failed status.json; a task that failed
        before run_task ran (or crashed without one) gets it here."""
        outcome.outcome = "failed"
        outcome.error = error
        # Said here, inside the task's log tail: a task that fails before training (its photos
        # refused, a bad field) would otherwise have no line of its own on its page.
        log.warning("task %s failed: %s", outcome.task_id, error)
        # Nothing half-exported reaches model.tar.gz: a consumer sees a LoRA only for a completed task.
        shutil.rmtree(self.env.model_dir / outcome.task_id, ignore_errors=True)
        status = read_status(checkpoint_dir) if status_written else None
        if not status or status.get("state") != "failed":
            status = write_failed_status(checkpoint_dir, error, extra=extra)
        outcome.step = int(status.get("step", 0) or 0)

    # -- helpers ----------------------------------------------------------------------------

    def _base_model(self):
        if self._base is None:
            t0 = time.monotonic()
            self._base = self.trainer.load_base(self.env.channel("model"))
            self._scorers = load_scorer_models(self.trainer, self.env.channel("eval"))  # None without 'eval'
            seconds = time.monotonic() - t0
            self.base_model_loads += 1
            self.base_model_seconds = round(self.base_model_seconds + seconds, 3)
            log.info("base model loaded in %.1f s (once for slot %d)", seconds, self.slot)
            if self.on_base_loaded is not None:
                self.on_base_loaded()
        return self._base

    def _transfer(self):
        if self.transfer is None:
            from container.s3 import TaskTransfer, default_client

            self.transfer = TaskTransfer(default_client())
        return self.transfer

    def _status_extra(self, task: "TaskSpec") -> dict:
        return task_status_extra(task, self.env.current_host, self.slot)


UPLOADED = "uploaded.txt"


def _status_state(checkpoint_dir: Path) -> str | None:
    status = read_status(checkpoint_dir)
    return status.get("state") if status else None


def _carry_into_manifest(path: Path, extra: Mapping[str, Any]) -> None:
    """user_id and metadata travel with the task to its manifest untouched (ARCHITECTURE.md)."""
    from container.records import read_json, write_json

    manifest = read_json(path)
    if not isinstance(manifest, dict):
        return
    added = {k: v for k, v in extra.items() if k not in manifest}
    if added:
        write_json(path, {**manifest, **added})


def _free_memory() -> None:
    """Between tasks: drop the finished task's tensors before the next one allocates."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # after a CUDA fault this fails too; the host replaces the process anyway
            pass
