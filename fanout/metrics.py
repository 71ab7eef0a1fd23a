"""SageMaker MetricDefinitions that read the training log line (stdlib only).

The container prints one plain line per logged step, also under a terminal progress bar:

    task=<task_id> step=<N>/<total> loss=<float> lr=<float> it/s=<float>

SageMaker applies each regex to every log line and records the first group as the metric,
so a multi-task job shows one interleaved series per metric (the task id stays in the logs).
"""

from __future__ import annotations

import re

LOG_LINE_PATTERN = r"task=(?P<task>\S+) step=(?P<step>[0-9]+)/(?P<total>[0-9]+) loss=(?P<loss>\S+) lr=(?P<lr>\S+)"

METRIC_DEFINITIONS: tuple[dict[str, str], ...] = (
    {"Name": "train:loss", "Regex": r"loss=([0-9.eE+-]+)"},
    {"Name": "train:step", "Regex": r"step=([0-9]+)/"},
    {"Name": "train:lr", "Regex": r"lr=([0-9.eE+-]+)"},
)


def metric_definitions() -> list[dict[str, str]]:
    """A fresh copy for a CreateTrainingJob request (callers may not mutate the constant)."""
    return [dict(d) for d in METRIC_DEFINITIONS]


def read_metrics(line: str) -> dict[str, float]:
    """What SageMaker would record from ``line`` (used by tests and `fanout status`)."""
    values = {}
    for definition in METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        if match:
            try:
                values[definition["Name"]] = float(match.group(1))
            except ValueError:
                continue
    return values
