"""Figures of a simulated run: cost per LoRA, time-to-model percentiles, instance-hours, the
comparison table, and PNG plots (matplotlib is imported only when plots are asked for)."""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from fanout.simulate.engine import Run
from fanout.simulate.inputs import SimulationError


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (nan when empty)."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q / 100.0 * len(values)) - 1))]


def max_calls_per_second(calls: Sequence[float]) -> int:
    """Most CreateTrainingJob calls in any window [t, t + 1 s)."""
    ordered = sorted(calls)
    return max((bisect.bisect_left(ordered, t + 1.0 - 1e-9) - i for i, t in enumerate(ordered)), default=0)


def summary(run: Run) -> dict[str, Any]:
    """The figures `--json` writes for one policy (times in seconds)."""
    waits = sorted(r.done - r.arrival for r in run.requests if r.done is not None)
    completed = len(waits)
    billed = sum(j.billed_s for j in run.jobs) + run.pool_s
    busy = sum(j.busy_s for j in run.jobs)
    slots = run.jobs[0].slots if run.jobs else 1          # one instance type per policy: busy GPU-s over billed GPU-s
    return {
        "name": run.policy.name,
        "completed": completed,
        "failed": sum(1 for r in run.requests if r.failed is not None),
        "cost": round(run.cost, 2),
        "cost_per_lora": round(run.cost / completed, 4) if completed else None,
        "time_to_model": {f"p{q}": round(percentile(waits, q), 1) if waits else None for q in (50, 95, 99)},
        "instance_hours": round(billed / 3600.0, 2),
        "train_share": round(busy / (billed * slots), 4) if billed else None,
        "instance_type": run.policy.instance_type,
        "slots_per_host": slots,
        "jobs_created": len(run.jobs),
        "throttles": run.throttles,
        "capacity_refusals": run.refusals,
        "create_calls": len(run.calls),
        "max_calls_per_second": max_calls_per_second(run.calls),
        "interruptions": run.interrupt_events,
        "work_lost_s": round(sum(run.interruptions), 1),
        "peak_instances": max(n for _, n, _ in run.instances),
        "last_model_s": round(max((r.done for r in run.requests if r.done is not None), default=0.0), 1),
        "policy": asdict(run.policy),
    }


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600.0:.2f} h" if seconds >= 5400 else f"{seconds / 60.0:.1f} min"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Policies side by side, one line each (markdown, so docs/fanout.md can hold it as is)."""
    head = ("| policy | done | failed | $/LoRA | p50 | p95 | p99 | instance-h | train share | jobs | "
            "throttles | refused | peak inst. |")
    lines = [head, "|" + "|".join([" --- "] * (head.count("|") - 1)) + "|"]
    for s in rows:
        ttm = s["time_to_model"]
        share = "-" if s["train_share"] is None else f"{s['train_share']:.1%}"
        cost = "-" if s["cost_per_lora"] is None else f"{s['cost_per_lora']:.3f}"
        lines.append(f"| {s['name']} | {s['completed']} | {s['failed']} | {cost} | {_hours(ttm['p50'])} | "
                     f"{_hours(ttm['p95'])} | {_hours(ttm['p99'])} | {s['instance_hours']:.1f} | {share} | "
                     f"{s['jobs_created']} | {s['throttles']} | {s['capacity_refusals']} | {s['peak_instances']} |")
    return "\n".join(lines)


def plot(runs: Sequence[Run], folder: str) -> list[str]:
    """ttm_cdf.png (time-to-model CDF per policy) and instances.png (instances held over time)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SimulationError(f"--plots needs matplotlib (pip install matplotlib; it is in the dev extra): {exc}") from None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        waits = sorted((r.done - r.arrival) / 3600.0 for r in run.requests if r.done is not None)
        if waits:
            ax.step(waits, [(i + 1) / len(run.requests) for i in range(len(waits))], where="post", label=run.policy.name)
    ax.set(xlabel="time to model (hours after the request)", ylabel="share of requests with a model",
           title="Time to model per launch policy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ttm_cdf.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5.0))
    for run in runs:
        times = [t / 3600.0 for t, _, _ in run.instances]
        line, = ax.step(times, [n for _, n, _ in run.instances], where="post", label=f"{run.policy.name}: held")
        if any(idle for _, _, idle in run.instances):
            ax.step(times, [idle for _, _, idle in run.instances], where="post", linestyle=":",
                    color=line.get_color(), label=f"{run.policy.name}: of which idle in warm pools")
    ax.set(xlabel="hours since the first request", ylabel="instances (provisioning, training or warm)",
           title="Instances in use over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.36))
    fig.tight_layout()
    fig.savefig(out / "instances.png", dpi=110)
    plt.close(fig)
    return [str(out / "ttm_cdf.png"), str(out / "instances.png")]
