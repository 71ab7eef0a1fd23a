"""Job and task pages: one self-contained HTML file each, readable offline and from S3.

    checkpoints/<task>/report.html   the task page, written when the task ends (report.task)
    W/report.html                    the job page of a `fanout local` job (report.job)
    fanout report JOB_NAME           the job page of a SageMaker job, from S3

Jinja2 templates, matplotlib's SVG and Pillow's thumbnails; never torch. Importing this
package is light: the container and `python -m train` call ``task_ended`` at the end of every
task, and only then are the template engine and matplotlib loaded. See docs/report.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from report.errors import ReportError  # noqa: F401 (the package's root exception)
from report.logtail import LogTail  # noqa: F401 (stdlib only)


def task_ended(checkpoint_dir: Path, *, model_dir: Path | None = None, log_lines: Sequence[str] = (),
               task_id: str | None = None) -> Path | None:
    """Write ``checkpoint_dir/report.html`` (and ``log-tail.txt``); never raises (report.task)."""
    from report.task import task_ended as write

    return write(checkpoint_dir, model_dir=model_dir, log_lines=log_lines, task_id=task_id)
