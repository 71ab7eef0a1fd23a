"""Stop requests: SIGTERM (StopTrainingJob, a spot interruption notice) and SIGINT (Ctrl-C).

SageMaker sends SIGTERM and SIGKILLs 120 s later. The handler only sets a flag: the training
loop polls it between steps (``run_task(stop_requested=...)``), saves its resume state and
returns, and the worker writes the summary and exits. Nothing heavy runs inside the handler.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("container.signals")


class StopFlag:
    """A callable that turns true once a stop signal arrived."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.signal_name = reason
            self._event.set()

    def install(self, signals=(signal.SIGTERM, signal.SIGINT)) -> "StopFlag":
        for sig in signals:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self._event.is_set():
            # A log call in a handler is safe enough here: the main thread is in Python code.
            log.warning("%s received: saving state and stopping after the current step", name)
        self.set(name)
