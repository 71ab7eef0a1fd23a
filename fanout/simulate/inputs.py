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

from fanout.demand import micro_step_seconds, preview_seconds, task_settings
from fanout.errors import FanoutError
from fanout.families import ALIASES, FAMILIES, FamilySpec, family_named
from fanout.instances import InstanceType, instance_type, slots_per_host
from fanout.plan import PlanConfig
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
    family: str = _f("sd", f"base-model family of the job ({', '.join(FAMILIES)}; a key of TrainTimes.step_s)")
    variant: str = _f("", "the family's variant (flux2-klein: base|distilled, z-image: base|turbo); empty: the first")
    trace: str = _f("", "CSV of requests: time_s (required), max_train_steps, resolution, prior, text_encoder")


def _family_steps() -> dict[str, dict[str, float]]:
    return {name: {str(r): v for r, v in spec.step_s.items()} for name, spec in FAMILIES.items()}


@dataclass(frozen=True)
class TrainTimes:
    """Seconds one task takes on one GPU slot, by family and resolution (the family table's
    figures, `fanout.families`; a faster GPU divides the training and preview part by its
    `fanout.instances` speed)."""

    step_s: Mapping[str, Mapping[str, float]] = field(default_factory=_family_steps, metadata={"help": (
        "seconds per training micro-step on an A10G (batch 1, bf16) by family and resolution; other resolutions "
        "scale by pixel area from the nearest entry (fanout.families; assumptions, see docs)")})
    preview_image_s: float | None = _f(None, "seconds per preview image at 512 px (area-scaled); None: the preview's "
                                             "sampling steps x a third of a training step, x2 with CFG")
    task_fixed_s: float | None = _f(None, "fixed seconds per task (images, LoRA attach, export, upload); None: the family's")
    load_s: float | None = _f(None, "seconds a slot takes to load its base (billed once per start); None: the family's")
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
        if any(v is not None and v < 0 for v in (self.preview_image_s, self.task_fixed_s, self.load_s)) \
                or self.checkpoint_every < 0:
            raise SimulationError(f"{source}: preview_image_s, task_fixed_s, load_s and checkpoint_every must be >= 0")

    def _table(self, family: str) -> Mapping[str, float]:
        canonical = ALIASES.get(family, family)
        names = [family, canonical] + [alias for alias, name in ALIASES.items() if name == canonical]
        table = next((self.step_s[n] for n in names if n in self.step_s), None)
        if not table:
            raise SimulationError(f"no training time for family {family!r}; known: {', '.join(sorted(self.step_s))} "
                                  "(add it with --train-times FILE)")
        return table

    def family(self, family: str) -> FamilySpec:
        """The family table's entry; a family only a --train-times file knows gets sd's overheads
        and no GPU-memory model (it is simulated, never fit-checked)."""
        table = self._table(family)
        if ALIASES.get(family, family) in FAMILIES:
            return family_named(family)
        return FamilySpec(family, family, (), step_s={int(r): float(v) for r, v in table.items()})

    def step_seconds(self, family: str, resolution: int) -> float:
        return self.family(family).step_seconds(resolution, self._table(family))

    def _config(self) -> PlanConfig:
        return PlanConfig(preview_every=self.preview_every, num_preview_images=self.num_preview_images)

    def task_seconds(self, task: TaskSpec, family: str, speed: float = 1.0, variant: str = "") -> float:
        """Wall seconds of one task on a warm GPU slot (a slot runs its tasks back to back)."""
        spec, table = self.family(family), self._table(family)
        s = task_settings(task, {}, spec, self._config())
        train = s.steps * micro_step_seconds(spec, s, table, self.prior_factor, self.text_encoder_factor)
        if self.preview_image_s is None:
            preview = preview_seconds(spec, variant or spec.variants[0], s, table)
        else:
            rounds = s.steps // s.preview_every if s.preview_every > 0 else 0
            preview = rounds * s.prompts * s.preview_images * self.preview_image_s * (s.resolution / 512) ** 2
        fixed = spec.task_fixed_s if self.task_fixed_s is None else self.task_fixed_s
        return fixed + (train + preview) / speed

    def checkpoint_seconds(self, task: TaskSpec, family: str, speed: float = 1.0, variant: str = "") -> float:
        """Seconds of work between two resume states of this task (what an interruption can lose)."""
        every = self.checkpoint_every or int(task.hyperparameters.get("max_train_steps", 400))
        steps = max(1, int(task.hyperparameters.get("max_train_steps", 400)))
        return self.task_seconds(task, family, speed, variant) * min(1.0, every / steps)

    def slot_load_seconds(self, family: str) -> float:
        return self.family(family).load_s if self.load_s is None else self.load_s


@dataclass(frozen=True)
class Aws:
    """SageMaker as the simulation sees it (instance type: g5-class, ml.g5.xlarge)."""

    price_per_hour: float = _f(0.0, "on-demand $ per instance-hour; 0: the policy's instance type's price in the "
                                    "instance table (fanout.instances: third-party quotes, us-east-1)")
    spot_discount: float = _f(0.55, "share of the price spot saves (assumption: g5.xlarge spot was ~46-70% below on-demand)")
    interruptions_per_hour: float = _f(0.05, "spot interruptions per instance-hour (assumption; AWS publishes only monthly bands)")
    spot_restart_s: float = _f(180.0, "seconds an interrupted job waits for spot capacity before re-provisioning (assumption)")
    instance_quota: int = _f(200, "account quota of training instances of the policy's type (assumption: a raised "
                                  "quota; a policy may carry its own, quotas are per type)")
    api_tps: float = _f(1.0, "CreateTrainingJob calls per second the account is allowed (~1 TPS, AWS docs)")
    api_burst: float = _f(1.0, "calls the API accepts at once after a quiet spell (assumption: no burst)")
    max_attempts: int = _f(8, "botocore attempts per call before giving up (Settings.max_attempts)")
    cold_provision_s: float = _f(180.0, "unbilled 'Starting' seconds of a new cluster (assumption; AWS gives no figure)")
    cold_start_s: float = _f(60.0, "billed seconds from TrainingStartTime to the first task: image, channels "
                                   "(assumption); the family's base load (TrainTimes.slot_load_seconds) comes on top")
    warm_provision_s: float = _f(15.0, "unbilled seconds to start on a matching warm pool (assumption)")
    warm_start_s: float = _f(0.0, "billed seconds to the first task on a warm pool before the base reloads (assumption: "
                                  "image and channels kept); the family's base load comes on top")
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
    instance_type: str = _f(_setting("instance_type"), "Settings.instance_type: the jobs' instance type (fanout.instances)")
    gpus_per_host: int = _f(0, "slots per host (the gpus_per_host hyperparameter); 0: every GPU of the type")
    instance_quota: int = _f(0, "quota of instances of this policy's type; 0: Aws.instance_quota")

    def instance(self) -> InstanceType:
        try:
            return instance_type(self.instance_type, f"policy {self.name!r}: instance_type")
        except FanoutError as exc:
            raise SimulationError(str(exc)) from None

    def slots(self) -> int:
        try:
            return slots_per_host(self.instance(), self.gpus_per_host or None)
        except FanoutError as exc:
            raise SimulationError(f"policy {self.name!r}: {exc}") from None

    def quota(self, aws: Aws) -> int:
        return self.instance_quota or aws.instance_quota

    def price(self, aws: Aws) -> float:
        """$ per instance-hour: Aws.price_per_hour when set, else the instance table's quote."""
        price = aws.price_per_hour or self.instance().price_per_hour
        if price is None:
            raise SimulationError(f"policy {self.name!r}: no price is quoted for {self.instance_type} in the instance "
                                  "table; give one with --aws price_per_hour=USD")
        return price

    def check(self, aws: Aws) -> None:
        self.price(aws)
        self.slots()
        if self.max_instances > self.quota(aws):
            raise SimulationError(f"policy {self.name!r}: max_instances={self.max_instances} exceeds the instance "
                                  f"quota {self.quota(aws)}; every such job would be refused")
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
