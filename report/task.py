"""The task page, ``checkpoints/<task>/report.html``: written when a task ends, whatever its state.

``task_ended`` is what the container's worker and ``python -m train`` call: it keeps the
task's last log lines beside its status (``log-tail.txt``), then writes the page. It never
raises: a page that cannot be written costs the user their page, not their LoRA.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from report.files import LocalFiles
from report.logtail import LOG_TAIL_NAME
from report.render import now_text, render, write_page
from report.taskview import read_task

PAGE_NAME = "report.html"
log = logging.getLogger("report")


def write_task_page(checkpoint_dir: Path, *, model_dir: Path | None = None, task_id: str | None = None,
                    job_href: str | None = None) -> Path:
    """Render ``checkpoint_dir/report.html`` from the folder (and the model folder, when it is not
    ``checkpoint_dir/final``)."""
    checkpoint_dir = Path(checkpoint_dir)
    model = LocalFiles(model_dir) if model_dir is not None else None
    model_href = "final/" if model_dir is None else os.path.relpath(model_dir, checkpoint_dir).replace(os.sep, "/") + "/"
    view = read_task(LocalFiles(checkpoint_dir), task_id=task_id, model=model, model_href=model_href)
    return write_page(checkpoint_dir / PAGE_NAME, render_task(view, job_href=job_href))


def render_task(view, *, job_href: str | None = None) -> str:
    return render("task.html", task=view, job_href=job_href, generated_at=now_text())


def task_ended(checkpoint_dir: Path, *, model_dir: Path | None = None, log_lines: Sequence[str] = (),
               task_id: str | None = None) -> Path | None:
    """Keep the log tail and write the page; None (and one warning) when that fails."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        if not (checkpoint_dir / "status.json").is_file():
            return None  # the task never started: there is nothing to show
        if log_lines:
            _write_text(checkpoint_dir / LOG_TAIL_NAME, "\n".join(log_lines) + "\n")
        return write_task_page(checkpoint_dir, model_dir=model_dir, task_id=task_id)
    except ImportError as exc:
        log.warning("task page not written: the report extra is not installed (%s); "
                    "pip install 'lora-fanout[report]'", exc)
    except Exception as exc:  # the edge: a page is never worth a task
        log.warning("task page %s not written: %s: %s", checkpoint_dir / PAGE_NAME, type(exc).__name__, exc)
    return None


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

