"""Each task's page (report/), written by the worker as soon as the task ends, whatever its state.

The worker runs a task inside ``task_log()`` (its last printed and logged lines are kept) and
then calls ``write_task_page``: ``checkpoints/<task>/report.html`` and ``log-tail.txt`` are
written there and reach S3 with the checkpoint sync. A page never fails a task: without the
report extra, or on any error, a warning is logged and the next task runs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("container.pages")


@contextmanager
def task_log() -> Iterator[object]:
    """The task's log tail (report.LogTail; stdlib only); yields an object with ``lines``."""
    from report.logtail import LogTail

    with LogTail() as tail:
        yield tail


def write_task_page(checkpoint_dir: Path, tail, outcome) -> Path | None:
    """The page of the task that just ended. A task restored from an earlier run keeps the page
    that run wrote (its log tail is the training's, not the restore's)."""
    if outcome.outcome == "restored" and (checkpoint_dir / "report.html").is_file():
        return None
    from report import task_ended

    page = task_ended(checkpoint_dir, log_lines=getattr(tail, "lines", ()), task_id=outcome.task_id)
    if page is not None:
        log.info("task %s: page %s", outcome.task_id, page)
    return page
