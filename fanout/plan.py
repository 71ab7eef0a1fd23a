"""The shard plan: a cost per task and a deterministic, balanced assignment to K hosts x G slots (pure).

Cost is in "step units": one SD 1.5 training step at 512 px, batch 1, on an A10G
(`fanout.families.UNIT_S` seconds). A task's cost is its seconds from the family table
(`fanout.families`, read through `fanout.demand`) in those units, so a FLUX.1 step costs what
it costs relative to an SD 1.5 one. Assignment is LPT over every GPU slot of the job (longest
first onto the least-loaded slot), within 4/3 of the optimum makespan and deterministic
because ties break by task_id, then by slot. A host's share is its slots' tasks in plan order:
the order its slots take them from the host's queue, which is the same LPT on that host.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from fanout.demand import micro_step_seconds, preview_seconds, task_settings
from fanout.errors import PlanError
from fanout.families import UNIT_S, FamilySpec, family_named
from fanout.tasks import TaskSpec


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class PlanConfig:
    """Cost-model knobs. Every field named like a TrainConfig field mirrors its default (a
    container test checks); a family's recipe defaults (FamilySpec.defaults) come on top."""

    max_train_steps: int = field(default=400, metadata=_h("training steps when neither job nor task sets them"))
    resolution: int = field(default=512, metadata=_h("training resolution (px) by default"))
    train_batch_size: int = field(default=1, metadata=_h("batch size by default"))
    preview_every: int = field(default=100, metadata=_h("steps between previews by default (0: none)"))
    num_preview_images: int = field(default=2, metadata=_h("images per preview prompt by default"))
    train_text_encoder: bool = field(default=False, metadata=_h("text-encoder LoRA by default"))
    gradient_accumulation_steps: int = field(default=1, metadata=_h("micro-batches per optimizer step by default"))
    preview_inference_steps: int = field(default=20, metadata=_h("sampling steps of a preview image by default"))
    preview_guidance_scale: float = field(default=7.5, metadata=_h("preview guidance by default (> 1: CFG doubles the batch)"))
    gradient_checkpointing: bool = field(default=False, metadata=_h("gradient checkpointing by default (GPU memory)"))
    mixed_precision: str = field(default="no", metadata=_h("precision of the frozen weights by default (GPU memory)"))
    base_quantization: str = field(default="none", metadata=_h("quantized base by default (GPU memory)"))
    rank: int = field(default=4, metadata=_h("LoRA rank by default (GPU memory)"))
    prior_factor: float = field(default=2.0, metadata=_h("cost multiplier with prior preservation (batch doubles)"))
    text_encoder_factor: float = field(default=1.35, metadata=_h("cost multiplier when the text encoder trains too"))
    preview_image_cost: float | None = field(default=None, metadata=_h(
        "step units per preview image at 512 px; None: from the family's step time and the preview's sampling steps"))
    task_overhead: float | None = field(default=None, metadata=_h(
        "fixed step units per task (data load, export, upload); None: the family table's task_fixed_s"))
    max_cost_ratio: float = field(default=3.0, metadata=_h("split_backlog: most to least costly task in one job"))


@dataclass(frozen=True)
class HostShare:
    index: int
    task_ids: tuple[str, ...]                       # plan order: the order its slots take them
    cost: float                                     # work: the sum of its tasks' costs
    slots: tuple[tuple[str, ...], ...] = ()         # per GPU slot, the tasks LPT gave it
    makespan: float = 0.0                           # when its busiest slot is done


@dataclass(frozen=True)
class Plan:
    hosts: tuple[HostShare, ...]
    costs: Mapping[str, float]
    makespan: float
    lower_bound: float
    slots_per_host: int = 1
    family: str = "sd"

    def share(self, index: int) -> tuple[str, ...]:
        """Task ids host ``index`` runs, in order (empty when the index is out of range)."""
        return self.hosts[index].task_ids if 0 <= index < len(self.hosts) else ()

    def slot_loads(self, index: int) -> tuple[float, ...]:
        """Cost of each GPU slot of host ``index``."""
        return tuple(round(math.fsum(self.costs[t] for t in slot), 3) for slot in self.hosts[index].slots)

    @property
    def total(self) -> float:
        return math.fsum(self.costs.values())

    @property
    def utilisation(self) -> float:
        """Busy GPU-time over billed GPU-time (1.0 = no slot idles while another works)."""
        billed = self.makespan * len(self.hosts) * self.slots_per_host
        return min(1.0, self.total / billed) if billed else 1.0     # min: costs are rounded to 3 places

    def to_dict(self) -> dict[str, Any]:
        """The `fanout plan --json` document."""
        return {
            "hosts": [{"index": h.index, "tasks": list(h.task_ids), "cost": h.cost, "makespan": h.makespan,
                       "slots": [list(s) for s in h.slots]} for h in self.hosts],
            "costs": dict(self.costs), "makespan": self.makespan, "lower_bound": self.lower_bound,
            "slots_per_host": self.slots_per_host, "family": self.family,
        }


def task_cost(task: TaskSpec, job_hyperparameters: Mapping[str, Any] | None = None,
              config: PlanConfig = PlanConfig(), family: FamilySpec | str = "sd", variant: str = "") -> float:
    """Estimated cost of one task in step units (see the module docstring)."""
    spec = family_named(family) if isinstance(family, str) else family
    s = task_settings(task, job_hyperparameters, spec, config, variant)
    train = s.steps * micro_step_seconds(spec, s, None, config.prior_factor, config.text_encoder_factor)
    if config.preview_image_cost is None:
        preview = preview_seconds(spec, variant or spec.variants[0], s) / UNIT_S
    else:
        rounds = s.steps // s.preview_every if s.preview_every > 0 else 0
        preview = rounds * s.prompts * s.preview_images * config.preview_image_cost * (s.resolution / 512.0) ** 2
    overhead = spec.task_fixed_s / UNIT_S if config.task_overhead is None else config.task_overhead
    return round(train / UNIT_S + preview + overhead, 3)


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


def _lpt(costs: Mapping[str, float], task_ids, hosts: int, slots: int) -> list[list[list[str]]]:
    """Longest processing time first onto the least-loaded slot, per host per slot.

    Ties go to the lowest slot number across hosts first (slot 0 of every host, then slot 1),
    so that a small batch spreads over hosts rather than filling one host's GPUs."""
    out: list[list[list[str]]] = [[[] for _ in range(slots)] for _ in range(hosts)]
    heap = [(0.0, g, h) for g in range(slots) for h in range(hosts)]
    heapq.heapify(heap)
    for task_id in sorted(task_ids, key=lambda tid: (-costs[tid], tid)):
        load, g, h = heapq.heappop(heap)
        out[h][g].append(task_id)
        heapq.heappush(heap, (load + costs[task_id], g, h))
    return out


def _costs(tasks, job_hyperparameters, config, family, variant) -> dict[str, float]:
    return {t.task_id: task_cost(t, job_hyperparameters, config, family, variant) for t in tasks}


def _plan(shares: Sequence[Sequence[Sequence[str]]], costs: Mapping[str, float], slots: int, family: str) -> Plan:
    """A Plan from per-host, per-slot task lists (a host's tasks in the order its slots got them)."""
    hosts = []
    for index, host in enumerate(shares):
        order = sorted((t for slot in host for t in slot), key=lambda tid: (-costs[tid], tid))
        loads = [math.fsum(costs[t] for t in slot) for slot in host]     # fsum: the same in any order
        hosts.append(HostShare(index, tuple(order), round(math.fsum(loads), 3), tuple(tuple(s) for s in host),
                               round(max(loads, default=0.0), 3)))
    total = math.fsum(costs.values())
    lower = max(total / (len(shares) * slots), max(costs.values(), default=0.0))
    return Plan(tuple(hosts), costs, max((h.makespan for h in hosts), default=0.0), round(lower, 3), slots, family)


def plan_tasks(tasks: Sequence[TaskSpec], instances: int,
               job_hyperparameters: Mapping[str, Any] | None = None,
               config: PlanConfig = PlanConfig(), *, slots_per_host: int = 1,
               family: FamilySpec | str = "sd", variant: str = "") -> Plan:
    """Assign every task to exactly one of ``instances`` hosts x ``slots_per_host`` GPU slots
    (deterministic). Tasks that all set `host` keep their host; LPT then spreads each host's
    tasks over its slots, as the host's queue will."""
    _check(tasks, instances)
    if isinstance(slots_per_host, bool) or not isinstance(slots_per_host, int) or slots_per_host < 1:
        raise PlanError(f"slots per host must be a positive integer, got {slots_per_host!r}")
    spec = family_named(family) if isinstance(family, str) else family
    costs = _costs(tasks, job_hyperparameters, config, spec, variant)
    pinned = _explicit(tasks, instances)
    if pinned is None:
        shares = _lpt(costs, costs, instances, slots_per_host)
    else:
        shares = [_lpt(costs, ids, 1, slots_per_host)[0] for ids in pinned]
    return _plan(shares, costs, slots_per_host, spec.name)


def round_robin(tasks: Sequence[TaskSpec], instances: int,
                job_hyperparameters: Mapping[str, Any] | None = None,
                config: PlanConfig = PlanConfig(), *, slots_per_host: int = 1,
                family: FamilySpec | str = "sd", variant: str = "") -> Plan:
    """Task i on slot i mod (K x G), in the task list's order: the naive baseline the
    benchmarks compare against."""
    _check(tasks, instances)
    spec = family_named(family) if isinstance(family, str) else family
    costs = _costs(tasks, job_hyperparameters, config, spec, variant)
    lanes = instances * slots_per_host
    shares = [[[t.task_id for t in tasks[g * instances + h::lanes]] for g in range(slots_per_host)]
              for h in range(instances)]
    return _plan(shares, costs, slots_per_host, spec.name)


def split_backlog(tasks: Sequence[TaskSpec], max_tasks_per_job: int,
                  job_hyperparameters: Mapping[str, Any] | None = None,
                  config: PlanConfig = PlanConfig(), family: FamilySpec | str = "sd",
                  variant: str = "") -> list[tuple[TaskSpec, ...]]:
    """Cut a backlog into jobs of similar-cost tasks, most costly first.

    One long task in a job of short ones keeps the whole cluster billing while it finishes
    (the AWS article's warning), so a job holds at most ``max_tasks_per_job`` tasks whose
    costs differ by at most ``config.max_cost_ratio``.
    """
    if max_tasks_per_job < 1:
        raise PlanError(f"max_tasks_per_job must be at least 1, got {max_tasks_per_job!r}")
    costed = sorted(((task_cost(t, job_hyperparameters, config, family, variant), t) for t in tasks),
                    key=lambda ct: (-ct[0], ct[1].task_id))
    jobs: list[list[TaskSpec]] = []
    head = math.inf
    for cost, task in costed:
        if not jobs or len(jobs[-1]) >= max_tasks_per_job or cost * config.max_cost_ratio < head:
            jobs.append([])
            head = cost
        jobs[-1].append(task)
    return [tuple(job) for job in jobs]


def instances_for(task_count: int, max_instances: int, slots_per_host: int = 1) -> int:
    """Hosts for a backlog: enough that every task has a GPU slot, up to the cap (an idle host,
    or an idle GPU of a host, still bills)."""
    return max(1, min(max_instances, math.ceil(task_count / max(1, slots_per_host))))


def claim_limit(max_tasks_per_job: int, max_jobs_per_run: int) -> int:
    """Most requests one launch_pending run claims: as many as the jobs it may create can hold."""
    return max_tasks_per_job * max_jobs_per_run


def launch_batches(tasks: Sequence[TaskSpec], max_tasks_per_job: int, max_instances: int,
                   job_hyperparameters: Mapping[str, Any] | None = None,
                   config: PlanConfig = PlanConfig(), *, slots_per_host: int = 1,
                   family: FamilySpec | str = "sd", variant: str = "") -> list[tuple[tuple[TaskSpec, ...], int]]:
    """launch_pending's decision for the tasks it claimed: jobs of similar cost, each with its K
    (hosts of ``slots_per_host`` GPU slots each).

    Pure, so that `fanout simulate` drives the same decision the Lambda makes."""
    return [(batch, instances_for(len(batch), max_instances, slots_per_host))
            for batch in split_backlog(tasks, max_tasks_per_job, job_hyperparameters, config, family, variant)]
