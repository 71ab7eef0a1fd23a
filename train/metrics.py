"""``checkpoints/<task>/metrics.jsonl``: the loss curve, one line per optimizer step.

Each line is ``{"step": N, "loss": float, "lr": float, "seconds": float}``, where ``seconds``
is the wall time since the task's training began, carried across resumes. A resumed run first
drops the lines past the step its resume state holds (the steps it will redo), so the file
never holds a step twice and its seconds keep counting from where the kept lines end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the file, in order (a line cut short by a kill is skipped)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    return parse_metrics(text)


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """The complete lines of a metrics.jsonl text (the task page reads it from S3 too)."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0.0
        self._t0 = time.perf_counter()

    def start(self, step: int) -> None:
        """Begin at ``step`` (0: a fresh run): keep the lines up to it, drop the rest."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step] if step > 0 else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self._offset = float(kept[-1].get("seconds") or 0.0) if kept else 0.0
        self._t0 = time.perf_counter()

    def append(self, step: int, loss: float, lr: float) -> None:
        seconds = self._offset + time.perf_counter() - self._t0
        row = {"step": step, "loss": loss, "lr": lr, "seconds": round(seconds, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
