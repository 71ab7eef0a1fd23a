"""The shard plan: a cost per task and a deterministic, balanced assignment to K hosts (pure).

Cost is in "step units": one training step at 512 px, batch 1, UNet-only LoRA. It only has to
rank tasks and add up; absolute seconds differ per GPU. Assignment is LPT (longest first onto
the least-loaded host), which is within 4/3 of the optimum makespan and deterministic here
because ties break by task_id and then by host index.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from fanout.errors import PlanError
from fanout.tasks import TaskSpec


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class PlanConfig:
    """Cost-model knobs. The first six mirror TrainConfig defaults (a container test checks)."""

    max_train_steps: int = field(default=400, metadata=_h("training steps when neither job nor task sets them"))
    resolution: int = field(default=512, metadata=_h("training resolution (px) by default"))
    train_batch_size: int = field(default=1, metadata=_h("batch size by default"))
    preview_every: int = field(default=100, metadata=_h("steps between previews by default (0: none)"))
    num_preview_images: int = field(default=2, metadata=_h("images per preview prompt by default"))
    train_text_encoder: bool = field(default=False, metadata=_h("text-encoder LoRA by default"))
    prior_factor: float = field(default=2.0, metadata=_h("cost multiplier with prior preservation (batch doubles)"))
    text_encoder_factor: float = field(default=1.35, metadata=_h("cost multiplier when the text encoder trains too"))
    preview_image_cost: float = field(default=4.0, metadata=_h("step units per preview image at 512 px"))
    task_overhead: float = field(default=60.0, metadata=_h("fixed step units per task (data load, export, upload)"))
    max_cost_ratio: float = field(default=3.0, metadata=_h("split_backlog: most to least costly task in one job"))


@dataclass(frozen=True)
class HostShare:
    index: int
    task_ids: tuple[str, ...]
    cost: float


@dataclass(frozen=True)
class Plan:
    hosts: tuple[HostShare, ...]
    costs: Mapping[str, float]
    makespan: float
    lower_bound: float

    def share(self, index: int) -> tuple[str, ...]:
        """Task ids host ``index`` runs, in order (empty when the index is out of range)."""
        return self.hosts[index].task_ids if 0 <= index < len(self.hosts) else ()

    @property
    def total(self) -> float:
        return sum(self.costs.values())

    @property
    def utilisation(self) -> float:
        """Busy host-time over billed host-time (1.0 = no host idles while another works)."""
        billed = self.makespan * len(self.hosts)
        return self.total / billed if billed else 1.0

    def to_dict(self) -> dict[str, Any]:
        """The `fanout plan --json` document."""
        return {
            "hosts": [{"index": h.index, "tasks": list(h.task_ids), "cost": h.cost} for h in self.hosts],
            "costs": dict(self.costs), "makespan": self.makespan, "lower_bound": self.lower_bound,
        }


def _value(raw: Any, kind: type, default):
    """A hyperparameter as SageMaker may send it ("400", "\\"400\\"", 400); default if unreadable.

    The planner only estimates; the container validates and fails the task on a bad value.
    """
    value = raw
    if isinstance(value, str):
        try:
            value = json.loads(value)
            if isinstance(value, str):
                value = json.loads(value) if value[:1] in '0123456789-tf' else value
        except (json.JSONDecodeError, ValueError):
            pass
    if kind is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value) if value is not None else default
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def task_cost(task: TaskSpec, job_hyperparameters: Mapping[str, Any] | None = None,
              config: PlanConfig = PlanConfig()) -> float:
    """Estimated cost of one task in step units (see the module docstring)."""
    hp = {**(job_hyperparameters or {}), **task.hyperparameters}
    steps = max(0, _value(hp.get("max_train_steps"), int, config.max_train_steps))
    resolution = max(1, _value(hp.get("resolution"), int, config.resolution))
    batch = max(1, _value(hp.get("train_batch_size"), int, config.train_batch_size))
    every = _value(hp.get("preview_every"), int, config.preview_every)
    images = max(0, _value(hp.get("num_preview_images"), int, config.num_preview_images))
    text_encoder = _value(hp.get("train_text_encoder"), bool, config.train_text_encoder)
    area = (resolution / 512.0) ** 2
    step = batch * area * (config.prior_factor if task.class_prompt else 1.0)
    step *= config.text_encoder_factor if text_encoder else 1.0
    previews = (steps // every) if every > 0 else 0
    prompts = max(1, len(task.validation_prompts))
    preview = previews * prompts * images * config.preview_image_cost * area
    return round(steps * step + preview + config.task_overhead, 3)


def _check(tasks: Sequence[TaskSpec], instances: int) -> None:
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise PlanError(f"instances must be a positive integer, got {instances!r}")
    seen: set[str] = set()
    for t in tasks:
        if t.task_id in seen:
            raise PlanError(f"task {t.task_id!r} appears twice; task ids must be unique")
        seen.add(t.task_id)


def _explicit(tasks: Sequence[TaskSpec], instances: int) -> list[list[str]] | None:
    """The hosts the task list fixes, or None when no task has `host`."""
    with_host = [t for t in tasks if t.host is not None]
    if not with_host:
        return None
    if len(with_host) != len(tasks):
        missing = [t.task_id for t in tasks if t.host is None]
        raise PlanError(f"{len(with_host)} of {len(tasks)} tasks set 'host' but {len(missing)} do not "
                        f"(first: {', '.join(missing[:3])}); set it on every task or on none")
    bad = [t for t in tasks if t.host >= instances]
    if bad:
        raise PlanError(f"task {bad[0].task_id!r} (line {bad[0].line}) has host={bad[0].host} but the job "
                        f"has {instances} instance(s); valid hosts are 0..{instances - 1}")
    shares: list[list[str]] = [[] for _ in range(instances)]
    for t in tasks:
        shares[t.host].append(t.task_id)
    return shares


def _lpt(costs: Mapping[str, float], instances: int) -> list[list[str]]:
    """Longest processing time first onto the least-loaded host (ties: task_id, host index)."""
    shares: list[list[str]] = [[] for _ in range(instances)]
    heap = [(0.0, i) for i in range(instances)]
    for task_id in sorted(costs, key=lambda tid: (-costs[tid], tid)):
        load, index = heapq.heappop(heap)
        shares[index].append(task_id)
        heapq.heappush(heap, (load + costs[task_id], index))
    return shares


def plan_tasks(tasks: Sequence[TaskSpec], instances: int,
               job_hyperparameters: Mapping[str, Any] | None = None,
               config: PlanConfig = PlanConfig()) -> Plan:
    """Assign every task to exactly one of ``instances`` hosts (deterministic)."""
    _check(tasks, instances)
    costs = {t.task_id: task_cost(t, job_hyperparameters, config) for t in tasks}
    shares = _explicit(tasks, instances) or _lpt(costs, instances)
    hosts = tuple(HostShare(i, tuple(ids), round(sum(costs[t] for t in ids), 3)) for i, ids in enumerate(shares))
    total = sum(costs.values())
    lower = max(total / instances, max(costs.values(), default=0.0))
    return Plan(hosts, costs, max((h.cost for h in hosts), default=0.0), round(lower, 3))


def round_robin(tasks: Sequence[TaskSpec], instances: int,
                job_hyperparameters: Mapping[str, Any] | None = None,
                config: PlanConfig = PlanConfig()) -> Plan:
    """Task i on host i mod K: the naive baseline the benchmarks compare against."""
    _check(tasks, instances)
    costs = {t.task_id: task_cost(t, job_hyperparameters, config) for t in tasks}
    shares = [[t.task_id for t in tasks[i::instances]] for i in range(instances)]
    hosts = tuple(HostShare(i, tuple(ids), round(sum(costs[t] for t in ids), 3)) for i, ids in enumerate(shares))
    lower = max(sum(costs.values()) / instances, max(costs.values(), default=0.0))
    return Plan(hosts, costs, max((h.cost for h in hosts), default=0.0), round(lower, 3))


def split_backlog(tasks: Sequence[TaskSpec], max_tasks_per_job: int,
                  job_hyperparameters: Mapping[str, Any] | None = None,
                  config: PlanConfig = PlanConfig()) -> list[tuple[TaskSpec, ...]]:
    """Cut a backlog into jobs of similar-cost tasks, most costly first.

    One long task in a job of short ones keeps the whole cluster billing while it finishes
    (the AWS article's warning), so a job holds at most ``max_tasks_per_job`` tasks whose
    costs differ by at most ``config.max_cost_ratio``.
    """
    if max_tasks_per_job < 1:
        raise PlanError(f"max_tasks_per_job must be at least 1, got {max_tasks_per_job!r}")
    costed = sorted(((task_cost(t, job_hyperparameters, config), t) for t in tasks),
                    key=lambda ct: (-ct[0], ct[1].task_id))
    jobs: list[list[TaskSpec]] = []
    head = math.inf
    for cost, task in costed:
        if not jobs or len(jobs[-1]) >= max_tasks_per_job or cost * config.max_cost_ratio < head:
            jobs.append([])
            head = cost
        jobs[-1].append(task)
    return [tuple(job) for job in jobs]


def instances_for(task_count: int, max_instances: int) -> int:
    """Hosts for a backlog: one per task up to the cap (an idle host still bills)."""
    return max(1, min(max_instances, task_count))


def claim_limit(max_tasks_per_job: int, max_jobs_per_run: int) -> int:
    """Most requests one launch_pending run claims: as many as the jobs it may create can hold."""
    return max_tasks_per_job * max_jobs_per_run


def launch_batches(tasks: Sequence[TaskSpec], max_tasks_per_job: int, max_instances: int,
                   job_hyperparameters: Mapping[str, Any] | None = None,
                   config: PlanConfig = PlanConfig()) -> list[tuple[tuple[TaskSpec, ...], int]]:
    """launch_pending's decision for the tasks it claimed: jobs of similar cost, each with its K.

    Pure, so that `fanout simulate` drives the same decision the Lambda makes."""
    return [(batch, instances_for(len(batch), max_instances))
            for batch in split_backlog(tasks, max_tasks_per_job, job_hyperparameters, config)]
