"""Progress output: one plain log line per logged step, plus a tqdm bar on a terminal.

The plain line is what SageMaker's metric regexes read (see docs/interfaces.md), so it is
printed to stdout whether or not a bar is shown:
``task=<id> step=<N>/<total> loss=<float> lr=<float> it/s=<float>``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def log_line(task_id: str, step: int, total: int, loss: float, lr: float, its: float) -> str:
    return f"task={task_id} step={step}/{total} loss={loss:.6f} lr={lr:.3e} it/s={its:.3f}"


class Progress:
    def __init__(self, task_id: str, total: int, start: int, log_every: int,
                 stream: TextIO | None = None, bar: bool | None = None):
        self.task_id, self.total, self.log_every = task_id, total, log_every
        self.stream = stream or sys.stdout
        self._t, self._step = time.perf_counter(), start
        self._t0, self._start = self._t, start
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=task_id, unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if step % self.log_every == 0 or step == self.total:
            now = time.perf_counter()
            its = (step - self._step) / max(now - self._t, 1e-9)
            self._t, self._step = now, step
            self.write(log_line(self.task_id, step, self.total, loss, lr, its))

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def steps_per_second(self) -> float:
        return (self._step - self._start) / max(self._t - self._t0, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
