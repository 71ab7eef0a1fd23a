"""What `fanout simulate` is fed: the workload, per-task training times, AWS, the launch policy.

Every default is here, with where it comes from. "measured" means a figure this project's
benchmarks produced; "AWS docs" a documented value; "assumption" a number nobody here
measured (override it with your own). docs/fanout.md#simulate lists them all with sources.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from fanout.errors import FanoutError
from fanout.settings import Settings
from fanout.tasks import TaskSpec


def _setting(name: str) -> Any:
    """launch_pending's own default (fanout.settings.Settings), so the simulated launcher is the deployed one."""
    return next(f.default for f in fields(Settings) if f.name == name)


class SimulationError(FanoutError):
    """A simulation input that cannot be used (names the field or file, and what is valid)."""


def _f(default: Any, text: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Workload:
    """Who asks for a model, and when."""

    arrival: str = _f("spike", "spike: `users` uniformly over `over_s`; steady: Poisson at users/over_s; trace: `trace` CSV")
    users: int = _f(10_000, "requests (one LoRA each) in a spike or steady run")
    over_s: float = _f(3600.0, "seconds the requests arrive over")
    steps_min: int = _f(400, "fewest training steps of a request (uniform between min and max)")
    steps_max: int = _f(1200, "most training steps of a request")
    resolution: int = _f(512, "training resolution of every request (px)")
    family: str = _f("sd15", "base-model family of the job (a key of TrainTimes.step_s)")
    trace: str = _f("", "CSV of requests: time_s (required), max_train_steps, resolution, prior, text_encoder")


@dataclass(frozen=True)
class TrainTimes:
    """Seconds one task takes on one host of the instance type, by family and resolution."""

    step_s: Mapping[str, Mapping[str, float]] = _f(
        {"sd15": {"512": 0.30, "768": 0.68}, "sd2": {"768": 0.68}, "sdxl": {"1024": 1.25}, "flux": {"1024": 3.0}},
        "seconds per training step (batch 1, rank 4, bf16) by family and resolution; other resolutions "
        "scale by pixel area from the nearest entry (assumption, see docs)")
    preview_image_s: float = _f(2.0, "seconds per preview image at 512 px, scaled by area (assumption: 20 sampling steps)")
    task_fixed_s: float = _f(15.0, "fixed seconds per task: images, LoRA attach, export, upload (assumption; CPU floor measured 0.63 s)")
    prior_factor: float = _f(2.0, "step time multiplier with prior preservation (the batch doubles)")
    text_encoder_factor: float = _f(1.35, "step time multiplier with text-encoder LoRA (the planner's factor)")
    checkpoint_every: int = _f(100, "steps between resume states (TrainConfig.checkpoint_every)")
    preview_every: int = _f(100, "steps between previews (TrainConfig.preview_every)")
    num_preview_images: int = _f(2, "images per preview (TrainConfig.num_preview_images)")

    def check(self, source: str = "TrainTimes") -> None:
        for family, table in self.step_s.items():
            try:
                ok = isinstance(table, Mapping) and table and all(int(r) > 0 and float(v) > 0 for r, v in table.items())
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise SimulationError(f"{source}: step_s[{family!r}] must map resolutions to seconds per step, "
                                      f"e.g. {{\"512\": 0.3}}, got {table!r}")
        if min(self.preview_image_s, self.task_fixed_s) < 0 or self.checkpoint_every < 0:
            raise SimulationError(f"{source}: preview_image_s, task_fixed_s and checkpoint_every must be >= 0")

    def step_seconds(self, family: str, resolution: int) -> float:
        table = self.step_s.get(family)
        if not table:
            raise SimulationError(f"no training time for family {family!r}; known: {', '.join(sorted(self.step_s))} "
                                  "(add it with --train-times FILE)")
        nearest = min(table, key=lambda r: abs(int(r) - resolution))
        return float(table[nearest]) * (resolution / int(nearest)) ** 2

    def task_seconds(self, task: TaskSpec, family: str) -> float:
        """Wall seconds of one task on a warm host (the container runs them back to back)."""
        hp = task.hyperparameters
        steps, resolution = int(hp.get("max_train_steps", 400)), int(hp.get("resolution", 512))
        step = self.step_seconds(family, resolution)
        step *= self.prior_factor if task.class_prompt else 1.0
        step *= self.text_encoder_factor if hp.get("train_text_encoder") else 1.0
        previews = steps // self.preview_every if self.preview_every > 0 else 0
        preview = previews * self.num_preview_images * self.preview_image_s * (resolution / 512) ** 2
        return self.task_fixed_s + steps * step + preview

    def checkpoint_seconds(self, task: TaskSpec, family: str) -> float:
        """Seconds of work between two resume states of this task (what an interruption can lose)."""
        every = self.checkpoint_every or int(task.hyperparameters.get("max_train_steps", 400))
        steps = max(1, int(task.hyperparameters.get("max_train_steps", 400)))
        return self.task_seconds(task, family) * min(1.0, every / steps)


@dataclass(frozen=True)
class Aws:
    """SageMaker as the simulation sees it (instance type: g5-class, ml.g5.xlarge)."""

    price_per_hour: float = _f(1.408, "on-demand $ per instance-hour, ml.g5.xlarge training, us-east-1 (AWS pricing page)")
    spot_discount: float = _f(0.55, "share of the price spot saves (assumption: g5.xlarge spot was ~46-70% below on-demand)")
    interruptions_per_hour: float = _f(0.05, "spot interruptions per instance-hour (assumption; AWS publishes only monthly bands)")
    spot_restart_s: float = _f(180.0, "seconds an interrupted job waits for spot capacity before re-provisioning (assumption)")
    instance_quota: int = _f(200, "account quota of training instances of this type (assumption: a raised quota)")
    api_tps: float = _f(1.0, "CreateTrainingJob calls per second the account is allowed (~1 TPS, AWS docs)")
    api_burst: float = _f(1.0, "calls the API accepts at once after a quiet spell (assumption: no burst)")
    max_attempts: int = _f(8, "botocore attempts per call before giving up (Settings.max_attempts)")
    cold_provision_s: float = _f(180.0, "unbilled 'Starting' seconds of a new cluster (assumption; AWS gives no figure)")
    cold_start_s: float = _f(90.0, "billed seconds from TrainingStartTime to the first task: image, channels, base model load (assumption)")
    warm_provision_s: float = _f(15.0, "unbilled seconds to start on a matching warm pool (assumption)")
    warm_start_s: float = _f(30.0, "billed seconds to the first task on a warm pool (assumption: image cached, model reloaded)")
    delivery_s: float = _f(5.0, "seconds from a task's end to its model registered (per-task upload + S3 event; assumption)")
    job_end_s: float = _f(30.0, "billed seconds after the last task: model.tar.gz upload (assumption)")
    task_failure_rate: float = _f(0.0, "chance a task fails (retried up to max_retries; set your measured rate)")
    max_retries: int = _f(2, "times a failed request is re-queued (Settings.max_retries)")
    horizon_s: float = _f(30 * 86400.0, "requests not done by then count as failed (guards a policy that never launches)")

    def check(self) -> None:
        problems = [name for name, ok in (("instance_quota >= 1", self.instance_quota >= 1),
                                          ("api_tps > 0", self.api_tps > 0), ("api_burst >= 1", self.api_burst >= 1),
                                          ("max_attempts >= 1", self.max_attempts >= 1),
                                          ("0 <= spot_discount < 1", 0 <= self.spot_discount < 1),
                                          ("0 <= task_failure_rate < 1", 0 <= self.task_failure_rate < 1),
                                          ("price_per_hour >= 0", self.price_per_hour >= 0),
                                          ("interruptions_per_hour >= 0", self.interruptions_per_hour >= 0)) if not ok]
        if problems:
            raise SimulationError(f"Aws: must have {', '.join(problems)}")


@dataclass(frozen=True)
class Policy:
    """How the launcher behaves: launch_pending's knobs plus when it runs."""

    name: str = _f("packing", "label in tables and plots")
    schedule_period_s: float = _f(60.0, "seconds between scheduled launch_pending runs (EventBridge rate(1 minute))")
    on_arrival: bool = _f(False, "also run launch_pending on every arrival (the table's stream)")
    min_batch: int = _f(1, "what-if (launch_pending has no hold; 1 is its behaviour): hold launches while fewer are pending")
    max_wait_s: float = _f(0.0, "... unless the oldest has waited this long")
    max_tasks_per_job: int = _f(_setting("max_tasks_per_job"), "Settings.max_tasks_per_job")
    max_instances: int = _f(_setting("max_instances"), "Settings.max_instances (most K per job)")
    max_jobs_per_run: int = _f(_setting("max_jobs_per_run"), "Settings.max_jobs_per_run")
    launch_rate: float = _f(_setting("launch_rate"), "Settings.launch_rate: CreateTrainingJob calls per second per run")
    warm_pool_s: float = _f(_setting("warm_pool_s"), "Settings.warm_pool_s: KeepAlivePeriodInSeconds (0: off; at most 3600)")
    spot: bool = _f(_setting("spot"), "Settings.spot: managed spot training")

    def check(self, aws: Aws) -> None:
        if self.max_instances > aws.instance_quota:
            raise SimulationError(f"policy {self.name!r}: max_instances={self.max_instances} exceeds the instance "
                                  f"quota {aws.instance_quota}; every such job would be refused")
        if self.spot and self.warm_pool_s:
            raise SimulationError(f"policy {self.name!r}: spot and warm pools cannot be combined (SageMaker refuses it)")
        if not self.on_arrival and self.schedule_period_s <= 0:
            raise SimulationError(f"policy {self.name!r}: schedule_period_s must be > 0 unless on_arrival is set")
        if self.launch_rate <= 0 or self.max_tasks_per_job < 1 or self.max_instances < 1 or self.max_jobs_per_run < 1:
            raise SimulationError(f"policy {self.name!r}: launch_rate must be > 0 and max_tasks_per_job, "
                                  "max_instances, max_jobs_per_run at least 1")
        if not 0 <= self.warm_pool_s <= 3600:
            raise SimulationError(f"policy {self.name!r}: warm_pool_s must be 0..3600 (SageMaker's limit)")


def overridden(obj, pairs: Sequence[str], what: str):
    """``obj`` with KEY=VALUE pairs applied (values converted to the field's type)."""
    kinds = {f.name: type(getattr(obj, f.name)) for f in fields(obj)}
    values: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or key not in kinds:
            raise SimulationError(f"{what} {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(kinds))}")
        kind = kinds[key]
        try:
            if kind is bool:
                flag = raw.strip().lower()
                if flag not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError(raw)
                values[key] = flag in ("1", "true", "yes", "on")
            else:
                values[key] = raw if kind is str else kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
        except ValueError:
            raise SimulationError(f"{what} {key}: {raw!r} is not a valid {kind.__name__}") from None
    return replace(obj, **values)


def load_train_times(path: str) -> TrainTimes:
    """A TrainTimes JSON file: any of its fields, e.g. {"step_s": {"sd15": {"512": 0.25}}}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SimulationError(f"{path}: cannot read training times ({exc})") from None
    known = {f.name for f in fields(TrainTimes)}
    if not isinstance(data, dict) or set(data) - known:
        raise SimulationError(f"{path}: must be a JSON object with keys among {', '.join(sorted(known))}")
    times = TrainTimes(**data)
    times.check(path)
    return times


def _task(index: int, steps: int, resolution: int, prior: bool = False, text_encoder: bool = False) -> TaskSpec:
    hp: dict[str, Any] = {"max_train_steps": steps, "resolution": resolution}
    if text_encoder:
        hp["train_text_encoder"] = True
    return TaskSpec(task_id=f"u{index:06d}.r0", instance_data=f"u{index:06d}/r0/images",
                    instance_prompt="a photo of sks person", class_prompt="a photo of a person" if prior else None,
                    hyperparameters=hp, user_id=f"u{index:06d}")


def arrivals(workload: Workload, seed: int) -> list[tuple[float, TaskSpec]]:
    """(arrival second, task) for every request, in arrival order (deterministic for a seed)."""
    if workload.arrival == "trace":
        return _trace(workload.trace)
    if workload.arrival not in ("spike", "steady"):
        raise SimulationError(f"arrival {workload.arrival!r}: valid are spike, steady, trace")
    if workload.users < 1 or workload.over_s <= 0 or not 1 <= workload.steps_min <= workload.steps_max:
        raise SimulationError("users must be >= 1, over_s > 0 and 1 <= steps_min <= steps_max")
    rng = random.Random(seed)
    if workload.arrival == "spike":
        times = sorted(rng.uniform(0, workload.over_s) for _ in range(workload.users))
    else:
        rate, t, times = workload.users / workload.over_s, 0.0, []
        for _ in range(workload.users):
            t += rng.expovariate(rate)
            times.append(t)
    return [(t, _task(i, rng.randint(workload.steps_min, workload.steps_max), workload.resolution))
            for i, t in enumerate(times)]


def _trace(path: str) -> list[tuple[float, TaskSpec]]:
    out = []
    try:
        with open(path, newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    out.append((float(row["time_s"]), _task(len(out), int(row.get("max_train_steps") or 400),
                                int(row.get("resolution") or 512), (row.get("prior") or "").strip() in ("1", "true"),
                                (row.get("text_encoder") or "").strip() in ("1", "true"))))
                except (KeyError, TypeError, ValueError) as exc:
                    raise SimulationError(f"{path}:{line}: needs time_s (seconds) and optional integer "
                                          f"max_train_steps, resolution; prior/text_encoder 0 or 1 ({exc!r})") from None
    except OSError as exc:
        raise SimulationError(f"{path}: cannot read the trace ({exc})") from None
    if not out:
        raise SimulationError(f"{path}: no requests (columns: time_s, max_train_steps, resolution, prior, text_encoder)")
    return sorted(out, key=lambda pair: pair[0])
