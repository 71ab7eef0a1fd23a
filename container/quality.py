"""The container's side of the evaluation (docs/quality.md): channel 'eval' in, verdicts out.

The job's optional `eval` channel holds the scorer models (clip/, dino/, face/). It is checked
at job start, before any model loads, through the job's ``train.api.Trainer``; the warm worker
loads the scorers once per host, right after the base model, and hands them to every task.
Without the channel nothing is loaded and every task's verdict is ``not_evaluated``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from container.errors import JobConfigError

if TYPE_CHECKING:
    from train.api import Trainer

log = logging.getLogger("container.quality")

CHANNEL = "eval"
NOT_EVALUATED = "not_evaluated"


class ScorerModelsLoadError(JobConfigError):
    """The scorer models of channel 'eval' passed the checks but could not be loaded."""


def check_eval_channel(trainer: "Trainer", channel: Path | None) -> None:
    """A scorer folder that cannot work fails the job at start, naming the channel and the folder."""
    if channel is None:
        return
    from train.errors import ConfigError

    try:
        trainer.check_scorers(channel, source=f"channel {CHANNEL!r} ({channel})")
    except ConfigError as exc:
        raise JobConfigError(str(exc)) from exc


def load_scorer_models(trainer: "Trainer", channel: Path | None) -> Any:
    """The scorers of channel 'eval' (None without the channel), loaded once for this host."""
    if channel is None:
        return None
    t0 = time.monotonic()
    try:
        scorers = trainer.load_scorers(channel)
    except Exception as exc:  # every task would go unevaluated: a job-level error, said once
        raise ScorerModelsLoadError(f"scorer models in channel {CHANNEL!r} failed to load: "
                                    f"{type(exc).__name__}: {exc}") from exc
    log.info("scorer models loaded in %.1f s from channel %r (once for this host)", time.monotonic() - t0, CHANNEL)
    return scorers


def task_verdict(status: Mapping[str, Any] | None) -> str:
    """The verdict train recorded in a task's status.json (not_evaluated when it has none)."""
    quality = (status or {}).get("quality")
    verdict = quality.get("verdict") if isinstance(quality, Mapping) else None
    return verdict if isinstance(verdict, str) else NOT_EVALUATED
