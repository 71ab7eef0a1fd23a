"""Where a task's time went: seconds per phase, recorded in ``status.json["timings"]``.

Phases (docs/report.md): ``data`` (reading photos, class images), ``encoding`` (latents and
prompt embeddings cached before the first step), ``training`` (the steps and their resume
states), ``previews``, ``evaluation``, ``export`` and ``upload`` (the container's per-task
delivery). A phase opened inside another (previews during training) pauses the outer one, so
the phases add up to the task's time and nothing is counted twice.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

PHASES = ("data", "encoding", "training", "previews", "evaluation", "export", "upload")


class PhaseTimer:
    """Seconds per phase; ``on_change`` receives the totals each time a phase ends."""

    def __init__(self, seconds: Mapping[str, float] | None = None,
                 on_change: Callable[[dict[str, float]], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds: dict[str, float] = {}
        self._on_change, self._clock = on_change, clock
        self._stack: list[str] = []
        self._since = 0.0
        self.add(seconds or {})

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def begin(self, name: str) -> None:
        """Open ``name`` (for a phase spanning a try block that already has a ``finally``)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        self._charge()
        self._stack.append(name)

    def end(self, name: str) -> None:
        if not self._stack or self._stack[-1] != name:
            raise ValueError(f"phase {name!r} ended but {self._stack[-1] if self._stack else 'none'!r} is open")
        self._charge()
        self._stack.pop()
        if self._on_change is not None:
            self._on_change(self.totals())

    def add(self, seconds: Mapping[str, float]) -> None:
        """Add earlier seconds (an interrupted attempt whose work this one continues)."""
        for name, value in seconds.items():
            if name in PHASES and isinstance(value, (int, float)):
                self.seconds[name] = self.seconds.get(name, 0.0) + float(value)

    def totals(self) -> dict[str, float]:
        return {name: round(self.seconds[name], 3) for name in PHASES if name in self.seconds}

    def _charge(self) -> None:
        """Give the time since the last change to the innermost open phase."""
        now = self._clock()
        if self._stack:
            top = self._stack[-1]
            self.seconds[top] = self.seconds.get(top, 0.0) + (now - self._since)
        self._since = now


def record_phase(status_path: Path, name: str, seconds: float) -> None:
    """Add ``seconds`` to phase ``name`` of a finished task's status.json (the container's upload).

    A missing or unreadable status.json is left alone: the timing is not worth inventing a status for.
    """
    import json

    from train.state import write_json_atomic

    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
    try:
        status = json.loads(Path(status_path).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(status, dict):
        return
    timings = dict(status.get("timings") or {})
    timings[name] = round(float(timings.get(name, 0.0)) + seconds, 3)
    write_json_atomic(Path(status_path), {**status, "timings": timings})
