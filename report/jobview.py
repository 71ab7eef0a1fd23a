"""What a job's page shows, from its hosts' summaries and the shared checkpoint prefix.

One row per task across all hosts; failures grouped by reason; a timeline per host (which
task ran when, idle gaps), the makespan against the plan's estimate, and the cost. Inputs come
from ``report.job`` (a `fanout local` workdir or a SageMaker job's S3 prefixes) as plain values.
"""

from __future__ import annotations

import math
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from report.charts import Lane, timeline_chart
from report.cost import JobCost, Price
from report.files import Files, read_json
from report.images import ROW_THUMB, Thumb, thumbnail
from report.taskview import preview_steps

DELIVERED = ("completed", "restored")


@dataclass
class JobInputs:
    """Everything read from where the job left its files (see report.job)."""

    name: str
    source: str                                   # where it was read from, for the page's header
    checkpoints: Files                            # the shared prefix: <task_id>/status.json, ...
    summaries: list[dict]                         # one per host (output/data/<host>/summary.json)
    task_ids: list[str]                           # the task list's order (may be empty)
    tasks: list = field(default_factory=list)     # fanout.tasks.TaskSpec of the task list (for the plan)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)  # the job's, as SageMaker passes them
    hosts: list[str] = field(default_factory=list)
    instance_type: str = ""
    billable_seconds: float | None = None         # SageMaker's, per instance
    task_href: Callable[[str], str | None] = lambda task_id: None
    notes: list[str] = field(default_factory=list)


@dataclass
class TaskRow:
    task_id: str
    user_id: str | None
    host: str
    slot: Any
    state: str
    verdict: str | None
    step: int | None
    total_steps: int | None
    seconds: float | None
    loss: float | None
    thumb: Thumb | None
    href: str | None
    error: str | None
    cost: float | None = None
    started_at: Any = None          # when it ran: its summary entry's times, else status.json's
    finished_at: Any = None


@dataclass
class HostRow:
    host: str
    tasks: int
    busy: float
    idle: float
    planned_cost: float | None = None
    planned_seconds: float | None = None


@dataclass
class FailureGroup:
    reason: str
    example: str
    tasks: list[tuple[str, str | None]]  # (task id, href)


@dataclass
class PlanCheck:
    makespan: float              # seconds, first host start to last task end
    estimate: float | None       # the plan's makespan in seconds (its cost units x measured seconds/unit)
    seconds_per_unit: float | None
    plan_units: float | None
    lower_bound: float | None


@dataclass
class JobView:
    name: str
    source: str
    rows: list[TaskRow]
    counts: dict[str, int]
    verdicts: dict[str, int]
    failures: list[FailureGroup]
    hosts: list[HostRow]
    timeline: str | None
    plan: PlanCheck | None
    cost: JobCost | None
    instance_type: str
    has_slots: bool
    notes: list[str]


def read_job(inputs: JobInputs, price: Price | None, *, as_if: str = "") -> JobView:
    outcomes = _outcomes(inputs.summaries)
    ids = list(dict.fromkeys([*inputs.task_ids, *outcomes, *tasks_with_status(inputs.checkpoints)]))
    with ThreadPoolExecutor(max_workers=8) as pool:  # S3 round trips dominate a large job
        rows = list(pool.map(lambda tid: _row(tid, outcomes.get(tid), inputs), ids))
    lanes, t0, end = timeline(inputs, rows)
    hosts = host_rows(lanes)
    plan = plan_check(inputs, rows, hosts, (end - t0) if lanes else None)
    cost = _cost(inputs, price, rows, hosts, plan, as_if)
    if cost is not None:
        for row in rows:
            row.cost = cost.of_seconds(row.seconds) if row.seconds else None
    counts: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
        if row.verdict:
            verdicts[row.verdict] = verdicts.get(row.verdict, 0) + 1
    return JobView(name=inputs.name, source=inputs.source, rows=rows, counts=counts, verdicts=verdicts,
                   failures=failure_groups(rows), hosts=hosts,
                   timeline=timeline_chart(lanes, salt=f"timeline-{inputs.name}") if lanes else None,
                   plan=plan, cost=cost, instance_type=inputs.instance_type,
                   has_slots=any(r.slot is not None for r in rows), notes=list(inputs.notes))


def _outcomes(summaries: Sequence[dict]) -> dict[str, dict]:
    """task id -> its summary entry, with the host it ran on."""
    out = {}
    for summary in summaries:
        for entry in summary.get("tasks") or ():
            if isinstance(entry, dict) and isinstance(entry.get("task_id"), str):
                out[entry["task_id"]] = {**entry, "_host": summary.get("host")}
    return out


def tasks_with_status(files: Files) -> list[str]:
    """Task folders in the prefix (names starting with '_' are the hosts' caches, never tasks)."""
    found = {p.split("/", 1)[0] for p in files.paths() if p.endswith("/status.json") and p.count("/") == 1}
    return sorted(t for t in found if not t.startswith("_"))


def _row(task_id: str, outcome: dict | None, inputs: JobInputs) -> TaskRow:
    folder = inputs.checkpoints.sub(task_id)
    status = read_json(folder, "status.json")
    status = status if isinstance(status, dict) else {}
    outcome = outcome or {}
    when = outcome or status
    quality = status.get("quality") if isinstance(status.get("quality"), dict) else {}
    state = outcome.get("outcome") or status.get("state") or "pending"
    step = status.get("step", outcome.get("step"))
    loss = status.get("loss", outcome.get("loss"))
    return TaskRow(
        task_id=task_id, user_id=outcome.get("user_id") or status.get("user_id"),
        host=str(outcome.get("_host") or status.get("host") or ""), slot=outcome.get("slot"), state=str(state),
        verdict=outcome.get("verdict") or quality.get("verdict") or status.get("verdict"),
        step=step if isinstance(step, int) else None,
        total_steps=status.get("total_steps") if isinstance(status.get("total_steps"), int) else None,
        seconds=_number(outcome.get("seconds")), loss=_number(loss), thumb=last_preview(folder),
        href=inputs.task_href(task_id), error=outcome.get("error") or status.get("error"),
        started_at=when.get("started_at"), finished_at=when.get("finished_at"),
    )


def last_preview(folder: Files) -> Thumb | None:
    steps = preview_steps(folder)
    if not steps:
        return None
    index = read_json(folder, steps[-1][1])
    images = index.get("images") if isinstance(index, dict) else None
    if not images or not isinstance(images[0], dict):
        return None
    rel = steps[-1][1].rsplit("/", 1)[0] + "/" + posixpath.basename(str(images[0].get("file")))
    return thumbnail(folder.read_bytes(rel), ROW_THUMB, alt=f"step {steps[-1][0]}: {images[0].get('prompt', '')}")


def failure_groups(rows: Sequence[TaskRow]) -> list[FailureGroup]:
    """Failed tasks grouped by their reason with task ids, paths, quoted values and numbers blanked."""
    groups: dict[str, FailureGroup] = {}
    for row in rows:
        if row.state != "failed":
            continue
        error = row.error or "(no reason recorded)"
        key = reason_key(error, row.task_id)
        group = groups.setdefault(key, FailureGroup(reason=key, example=error, tasks=[]))
        group.tasks.append((row.task_id, row.href))
    return sorted(groups.values(), key=lambda g: -len(g.tasks))


def reason_key(error: str, task_id: str) -> str:
    text = error.replace(task_id, "<task>")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"(?<![\w<])/[^\s:;,)]+", "<path>", text)
    text = re.sub(r"\d+(?:\.\d+)?(?:e-?\d+)?", "N", text)
    return text[:400]


def timeline(inputs: JobInputs, rows: Sequence[TaskRow]) -> tuple[list[Lane], float, float]:
    """Lanes in seconds from the first host's start, one per host, or one per slot of a host
    whose tasks say which slot ran them; idle = billed time with nothing running on the lane."""
    starts = {s.get("host"): _time(s.get("started_at")) for s in inputs.summaries}
    loads = {(s.get("host"), None): _number(s.get("base_model_seconds")) or 0.0 for s in inputs.summaries}
    loads.update({(s.get("host"), p.get("slot")): _number(p.get("base_model_seconds")) or 0.0
                  for s in inputs.summaries for p in s.get("slot_processes") or [] if isinstance(p, dict)})
    seconds = {r.task_id: r.seconds or 0.0 for r in rows}
    ends = {s.get("host"): _time(s.get("finished_at")) for s in inputs.summaries}
    spans: dict[tuple[str, Any], list[tuple[float, float, str, str]]] = {}
    for row in rows:
        start = _time(row.started_at)
        if start is None or not row.host:
            continue
        end = _time(row.finished_at) or start
        end = max(end, start + (row.seconds or 0.0))
        slot = row.slot if isinstance(row.slot, int) and not isinstance(row.slot, bool) else None
        spans.setdefault((row.host, slot), []).append((start, end, row.task_id, row.state))
    known = [t for t in [*starts.values(), *(s for v in spans.values() for s, *_ in v)] if t is not None]
    if not known:
        return [], 0.0, 0.0
    t0 = min(known)
    job_end = max([t for t in ends.values() if t is not None] + [e for v in spans.values() for _, e, *_ in v])
    order = list(dict.fromkeys([*inputs.hosts, *(s.get("host") for s in inputs.summaries), *sorted(h for h, _ in spans)]))
    lanes = []
    for host in [h for h in order if h]:
        slots = sorted(slot for h, slot in spans if h == host and slot is not None)
        keys = [(host, slot) for slot in slots] + ([(host, None)] if (host, None) in spans or not slots else [])
        for key in keys:
            load = loads.get(key, loads.get((host, None), 0.0) if key[1] is None else 0.0)
            tasks = split_base_load(sorted(spans.get(key, [])), load, seconds)
            label = host if key[1] is None else f"{host} slot {key[1]}"
            lane = Lane(host=label, tasks=[(s - t0, e - t0, tid, state) for s, e, tid, state in tasks],
                        group=host if key[1] is not None else "")
            start = (starts.get(host) or (tasks[0][0] if tasks else t0)) - t0
            lane.idle = gaps([(s, e) for s, e, *_ in lane.tasks], start, job_end - t0)
            lanes.append(lane)
    return lanes, t0, job_end


def gaps(busy: Sequence[tuple[float, float]], start: float, end: float, least: float = 0.5) -> list[tuple[float, float]]:
    """The stretches of [start, end] longer than ``least`` seconds that no span of ``busy`` covers."""
    out, cursor = [], start
    for s, e in sorted(busy):
        if s - cursor > least:
            out.append((cursor, s))
        cursor = max(cursor, e)
    if end - cursor > least:
        out.append((cursor, end))
    return out


def host_rows(lanes: Sequence[Lane]) -> list[HostRow]:
    """One row per host: its tasks and busy time over all its slots, and the billed time in which
    none of its slots ran anything (what an idle host costs)."""
    hosts: dict[str, list[Lane]] = {}
    for lane in lanes:
        hosts.setdefault(lane.group or lane.host, []).append(lane)
    rows = []
    for host, own in hosts.items():
        spans = [(s, e) for lane in own for s, e, *_ in lane.tasks]
        edges = [t for lane in own for span in (*lane.idle, *[(s, e) for s, e, *_ in lane.tasks]) for t in span]
        idle = gaps(spans, min(edges), max(edges)) if edges else []
        rows.append(HostRow(host=host, tasks=sum(o != "base_model_load" for lane in own for *_, o in lane.tasks),
                            busy=sum(e - s for s, e in spans), idle=sum(e - s for s, e in idle)))
    return rows


def split_base_load(spans: list, load: float, seconds: Mapping[str, float]) -> list:
    """The host's one base model load happens inside the first task that trains; a task's own
    seconds leave it out, so that task is the one whose wall time exceeds its seconds by the load."""
    if load <= 0:
        return spans
    for i, (start, end, task_id, state) in enumerate(spans):
        if (end - start) - seconds.get(task_id, 0.0) >= 0.8 * load:
            load_end = min(start + load, end)
            return [*spans[:i], (start, load_end, "base model", "base_model_load"), (load_end, end, task_id, state),
                    *spans[i + 1:]]
    return spans


def plan_check(inputs: JobInputs, rows: Sequence[TaskRow], hosts: list[HostRow], makespan: float | None) -> PlanCheck | None:
    """The plan this job ran (fanout.plan, same inputs), priced in seconds by this job's own pace."""
    if makespan is None:
        return None
    if not inputs.tasks or not inputs.hosts:
        return PlanCheck(makespan, None, None, None, None)
    from fanout.errors import FanoutError
    from fanout.plan import plan_tasks

    # The hosts' slots (one per GPU) as the job ran them: the plan spread each host's tasks over them.
    slots = max([int(s.get("slots") or 1) for s in inputs.summaries if isinstance(s.get("slots"), int)] or [1])
    try:
        plan = plan_tasks(inputs.tasks, len(inputs.hosts), dict(inputs.hyperparameters), slots_per_host=slots)
    except FanoutError:
        return PlanCheck(makespan, None, None, None, None)
    trained = [r for r in rows if r.state == "completed" and r.seconds and r.task_id in plan.costs]
    units = sum(plan.costs[r.task_id] for r in trained)
    per_unit = sum(r.seconds for r in trained) / units if units else None
    by_host = {h.host: h for h in hosts}
    for share in plan.hosts:
        if share.index < len(inputs.hosts) and inputs.hosts[share.index] in by_host:
            row = by_host[inputs.hosts[share.index]]
            row.planned_cost = share.cost
            # when the host's busiest slot is done (its whole share with one slot)
            row.planned_seconds = (share.makespan or share.cost) * per_unit if per_unit else None
    return PlanCheck(makespan=makespan, estimate=plan.makespan * per_unit if per_unit else None,
                     seconds_per_unit=per_unit, plan_units=plan.makespan, lower_bound=plan.lower_bound)


def _cost(inputs: JobInputs, price: Price | None, rows, hosts, plan: PlanCheck | None, as_if: str) -> JobCost | None:
    if price is None or plan is None and inputs.billable_seconds is None:
        return None
    if inputs.billable_seconds is not None:
        billed, basis = float(inputs.billable_seconds), "SageMaker's BillableTimeInSeconds"
    else:
        billed, basis = plan.makespan, f"the job's makespan on each instance{as_if}"
    return JobCost(price=price, instances=max(1, len(inputs.hosts) or len(hosts)), billed_seconds=billed,
                   delivered=sum(r.state in DELIVERED for r in rows), idle_seconds=sum(h.idle for h in hosts),
                   basis=basis)


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
