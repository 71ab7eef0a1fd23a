"""What the container writes about itself: the failure file, summary.json, task status.

Every file is written to a temporary name and renamed, so a host killed mid-write (spot,
SIGKILL) never leaves half a JSON document for the restart or for S3 to pick up.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

FAILURE_LIMIT = 1024  # SageMaker shows at most this many characters as FailureReason
STATUS_FILE = "status.json"


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The document at ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def failure_reason(headline: str, problems: Sequence[str] = (), limit: int = FAILURE_LIMIT) -> str:
    """``headline`` then the problems, most important first, cut to ``limit`` characters.

    Problems that do not fit are counted ("... and 7 more") rather than cut mid-sentence.
    """
    text = headline.strip()
    for i, problem in enumerate(problems):
        rest = len(problems) - i
        line = f"\n- {problem.strip()}"
        tail = f"\n... and {rest - 1} more" if rest > 1 else ""
        more = f"\n... and {rest} more"
        if len(text) + len(line) + len(tail) <= limit:
            text += line
            continue
        if len(text) + len(more) <= limit:
            return text + more
        break
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_failure(path: Path, headline: str, problems: Sequence[str] = ()) -> str:
    reason = failure_reason(headline, problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reason)
    return reason


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- task status (checkpoint_dir/status.json) -------------------------------------------------

def read_status(checkpoint_dir: Path) -> dict | None:
    status = read_json(checkpoint_dir / STATUS_FILE)
    return status if isinstance(status, dict) else None


def task_status_extra(task, host: str, slot: int | None = None) -> dict[str, Any]:
    """What every status.json of ``task`` (a fanout TaskSpec) carries besides its state: ids,
    where it ran, and the SaaS's own user id and metadata."""
    extra: dict[str, Any] = {"task_id": task.task_id, "host": host}
    if slot is not None:
        extra["slot"] = slot
    if task.user_id is not None:
        extra["user_id"] = task.user_id
    if task.metadata:
        extra["metadata"] = dict(task.metadata)
    return extra


def write_failed_status(checkpoint_dir: Path, error: str, *, extra: Mapping[str, Any]) -> dict:
    """Status of a task that failed before training started (bad path, bad hyperparameter).

    Written through train.state.StatusFile, the file's one writer, so the format and states
    are train's and nothing here rewrites a status train wrote (docs/container.md).
    """
    from train.state import StatusFile

    status = StatusFile(checkpoint_dir / STATUS_FILE, extra=extra)
    status.fail_unstarted(error)
    return dict(status.data)


def write_abandoned_status(checkpoint_dir: Path, error: str, *, extra: Mapping[str, Any],
                           state: str = "failed") -> dict:
    """Status of a task whose slot process died under it (SIGKILL, a segfault, a CUDA fault).

    The dead attempt wrote "running" and counted itself; it ends failed here, written by the
    host that saw it die. A process that died before train started the attempt leaves no
    running status: that attempt is counted now, like any task that failed before training.
    """
    from train.state import StatusFile

    previous = read_status(checkpoint_dir) or {}
    status = StatusFile(checkpoint_dir / STATUS_FILE, extra=extra)
    if previous.get("state") == "running":
        status.abandon(error, state=state)
    elif state == "interrupted":
        return previous  # nothing ran yet, or its own process already said how it ended
    else:
        status.fail_unstarted(error)
    return dict(status.data)


# -- summary.json (output/data/<host>/summary.json) -------------------------------------------

@dataclass
class TaskOutcome:
    """One task as this host's summary reports it."""

    task_id: str
    outcome: str  # completed | restored | failed | interrupted | not_started
    step: int = 0
    loss: float | None = None
    seconds: float = 0.0
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    model_dir: str | None = None
    uploaded_to: str | None = None
    user_id: str | None = None
    verdict: str = "not_evaluated"  # passed | needs_review | failed_quality | not_evaluated (docs/quality.md)
    slot: int | None = None  # the slot (0..slots-1) that ran it; None when no slot took it
    retried_after: str | None = None  # why its first slot process died, when it was run again


@dataclass
class HostSummary:
    host: str
    host_index: int
    hosts: list[str]
    share: list[str]
    slots: int = 1  # worker processes of this host, one per GPU (gpus_per_host)
    base_model_loads: int = 0  # once per slot process that trained (a restarted slot loads again)
    base_model_seconds: float = 0.0  # every load together
    makespan_seconds: float = 0.0  # first task start (after its base load) to last task end
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    seconds: float = 0.0
    state: str = "running"  # running | completed | failed | interrupted
    tasks: list[TaskOutcome] = field(default_factory=list)
    slot_processes: list[dict] = field(default_factory=list)  # per slot: device, pid, starts, faults, ...

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.outcome] = out.get(t.outcome, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts()}

    def write(self, output_data_dir: Path) -> Path:
        path = output_data_dir / "summary.json"
        write_json(path, self.to_dict())
        return path


def outcome_table(outcomes: Iterable[TaskOutcome]) -> str:
    """A few plain log lines, one per task, for the end of the host's log."""
    rows = [f"{'task':24} {'outcome':11} {'slot':>4} {'step':>6} {'seconds':>8} {'verdict':14}  error"]
    for t in outcomes:
        slot = "-" if t.slot is None else str(t.slot)
        rows.append(f"{t.task_id:24} {t.outcome:11} {slot:>4} {t.step:>6} {t.seconds:>8.1f} {t.verdict:14}  "
                    f"{(t.error or '')[:80]}")
    return "\n".join(rows)
