"""The pages' charts as inline SVG, drawn by matplotlib (no pyplot: no global state, no display).

Text stays text (``svg.fonttype: none``), which keeps a chart a few KB and lets the browser's
own fonts draw it; every chart gets its own id salt so two charts in one page never share a
clip-path id.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

OUTCOME_COLOURS = {"completed": "#2e7d32", "restored": "#00897b", "failed": "#c62828",
                   "interrupted": "#ef6c00", "running": "#1565c0", "not_started": "#9e9e9e",
                   "base_model_load": "#5c6bc0"}
IDLE_COLOUR = "#e0e0e0"


def _svg(fig, salt: str) -> str:
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # Scale with the page: keep the viewBox, drop the fixed size in points.
    return re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', r'<svg\1 class="chart" role="img"', text, count=1)


def smoothed(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def loss_chart(rows: Sequence[dict], salt: str = "loss") -> str | None:
    """Loss per step (thin), its smoothed line, and the learning rate on a second axis."""
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if not rows:
        return None
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    loss = [float(r["loss"]) for r in rows]
    weight = 0.9 if len(rows) >= 50 else 0.6
    fig = Figure(figsize=(7.5, 3.0))
    ax = fig.add_subplot()
    ax.plot(steps, loss, color="#90a4ae", linewidth=0.8, label="loss per step")
    ax.plot(steps, smoothed(loss, weight), color="#1565c0", linewidth=2.0, label=f"smoothed (EMA {weight})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr = [r.get("lr") for r in rows]
    lines, labels = ax.get_legend_handles_labels()
    if all(isinstance(v, (int, float)) for v in lr):
        ax2 = ax.twinx()
        ax2.plot(steps, lr, color="#ef6c00", linewidth=1.2, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more, more_labels = ax2.get_legend_handles_labels()
        lines, labels = lines + more, labels + more_labels
    ax.legend(lines, labels, loc="upper right", fontsize=8, frameon=False)
    return _svg(fig, salt)


@dataclass
class Lane:
    """One row of the timeline, a host or one slot of it (``host`` is the row's label): its
    tasks and the gaps where it was billed but idle."""

    host: str
    tasks: list[tuple[float, float, str, str]] = field(default_factory=list)  # start, end, task id, outcome
    idle: list[tuple[float, float]] = field(default_factory=list)
    group: str = ""  # the host a slot's row belongs to ("" : the row is the host)


def timeline_chart(lanes: Sequence[Lane], salt: str = "timeline") -> str | None:
    """Which task ran when on which host or slot (seconds from the job's start), idle gaps hatched."""
    if not lanes:
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    end = max([e for lane in lanes for _, e, _, _ in lane.tasks] + [e for lane in lanes for _, e in lane.idle] + [1.0])
    fig = Figure(figsize=(9.0, 0.9 + 0.42 * len(lanes)))
    ax = fig.add_subplot()
    label_min = end / 25  # a bar this wide has room for its task id
    labelled = sum(len(lane.tasks) for lane in lanes) <= 300  # beyond that, ids are the table's job
    for y, lane in enumerate(lanes):
        if lane.idle:
            ax.broken_barh([(s, e - s) for s, e in lane.idle], (y - 0.35, 0.7), facecolors=IDLE_COLOUR,
                           edgecolor="#bdbdbd", hatch="///", linewidth=0.3)
        for start, stop, task_id, outcome in lane.tasks:
            width = max(stop - start, end / 400)
            ax.broken_barh([(start, width)], (y - 0.35, 0.7), facecolors=OUTCOME_COLOURS.get(outcome, "#546e7a"),
                           edgecolor="white", linewidth=0.5)
            if labelled and width >= label_min:
                ax.text(start + width / 2, y, task_id, ha="center", va="center", fontsize=7, color="white",
                        clip_on=True)
    ax.set_yticks(range(len(lanes)), [lane.host for lane in lanes])
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("seconds since the job's first host started")
    ax.grid(axis="x", alpha=0.3)
    seen = sorted({o for lane in lanes for *_, o in lane.tasks})
    handles = [Patch(facecolor=OUTCOME_COLOURS.get(o, "#546e7a"), label=o.replace("_", " ")) for o in seen]
    handles.append(Patch(facecolor=IDLE_COLOUR, edgecolor="#bdbdbd", hatch="///", label="idle (billed)"))
    # above the lanes: below them it would meet the axis label, however many lanes there are
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), fontsize=8,
              frameon=False)
    return _svg(fig, salt)
