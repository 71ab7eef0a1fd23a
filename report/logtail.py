"""The last lines a task printed or logged, kept in memory for its page (standard library only).

A failed task's page shows its error and the lines before it. The lines are already on the
host's stdout (CloudWatch), but a person reading one task's page should not have to search a
host's log for them. ``LogTail`` tees ``sys.stdout``/``sys.stderr`` (the loop's step lines,
warnings) and listens on the root logger (the container's and the libraries' records), keeping
the last ``max_lines``; what was written still goes where it went before.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import TextIO

LOG_TAIL_NAME = "log-tail.txt"


class LogTail:
    def __init__(self, max_lines: int = 200):
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._saved: tuple[TextIO, TextIO] | None = None
        self._handler: logging.Handler | None = None

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def __enter__(self) -> "LogTail":
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self._add), _Tee(sys.stderr, self._add)
        self._handler = _Keep(self._add)
        root = logging.getLogger()
        formatter = next((h.formatter for h in root.handlers if h.formatter is not None), None)
        self._handler.setFormatter(formatter or logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self._handler)
        for tee in (sys.stdout, sys.stderr):
            if isinstance(tee, _Tee):
                tee.flush_partial()
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved

    def _add(self, text: str) -> None:
        for line in text.splitlines():
            line = line.rsplit("\r", 1)[-1].rstrip()  # a progress bar's last redraw only
            if line:
                self._lines.append(line)


class _Keep(logging.Handler):
    def __init__(self, add):
        super().__init__()
        self._add = add

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._add(self.format(record))
        except Exception:  # a record that cannot be formatted must not break the task
            pass


class _Tee:
    """Writes through to ``stream``; complete lines also go to ``add``."""

    def __init__(self, stream: TextIO, add):
        self._stream, self._add, self._partial = stream, add, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._partial += text
        if "\n" in self._partial:
            done, self._partial = self._partial.rsplit("\n", 1)
            self._add(done)
        return written

    def flush_partial(self) -> None:
        if self._partial:
            self._add(self._partial)
            self._partial = ""

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
