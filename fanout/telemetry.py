"""The pipeline's CloudWatch metrics, written as embedded-metric-format (EMF) log lines.

No API call and no permission: a Lambda's stdout goes to CloudWatch Logs, which turns each
EMF line into metric data. Powertools' `EphemeralMetrics` writes the lines (imported at flush
time, so importing the handlers costs what it did). Each handler invocation collects counts
and timings here and flushes once at its end: one line per dimension set.

What the lines carry: the namespace (FANOUT_METRICS_NAMESPACE), the `service` dimension (the
stack's job prefix), metric values, and for failures and retries a `ReasonClass` from a
fixed list, for verdicts a `Verdict`. Never a user or request id, prompt or reason text: a
metric dimension is aggregated across users, and reasons can hold anything. The names,
units and dimensions are listed in docs/fanout.md#metrics.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from typing import Any

COUNT, SECONDS = "Count", "Seconds"
# A failure's reason, as a metric dimension: low cardinality, no user content.
REASON_CLASSES = ("invalid_request", "no_images", "invalid_hyperparameters", "capacity", "throttled",
                  "launch_error", "out_of_memory", "timeout", "spot_interruption", "task_error", "job_failed",
                  "job_stopped", "quality", "other")
# Recognised inside a free-text reason, whatever the call site expected (first match wins).
_PATTERNS = (
    ("out_of_memory", re.compile(r"out of memory|OutOfMemory|\bOOM\b", re.I)),
    ("capacity", re.compile(r"ResourceLimitExceeded|InsufficientCapacity|CapacityError", re.I)),
    ("throttled", re.compile(r"Throttl|Rate exceeded", re.I)),
    ("timeout", re.compile(r"MaxRuntime|timed out|deadline", re.I)),
    ("spot_interruption", re.compile(r"spot", re.I)),
)
THROTTLING_CODES = ("ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded")


def reason_class(reason: str | None, fallback: str = "other") -> str:
    """One of REASON_CLASSES for ``reason``: a recognised pattern, else the caller's ``fallback``
    (what the call site knows: a refused upload, a task's own error, a failed job, ...)."""
    for name, pattern in _PATTERNS:
        if reason and pattern.search(reason):
            return name
    return fallback if fallback in REASON_CLASSES else "other"


class Telemetry:
    """Counts and timings of one handler invocation, by dimension set (thread-safe: the
    launcher marks requests on a few threads)."""

    def __init__(self, namespace: str = "Fanout", service: str = "fanout"):
        self.namespace, self.service = namespace, service
        self._lock = threading.Lock()
        self._values: dict[tuple[tuple[str, str], ...], dict[tuple[str, str], list[float]]] = defaultdict(
            lambda: defaultdict(list))

    def _add(self, name: str, unit: str, value: float, dims: dict[str, str], sum_up: bool) -> None:
        key = tuple(sorted(dims.items()))
        with self._lock:
            values = self._values[key][(name, unit)]
            if sum_up and values:
                values[0] += value
            else:
                values.append(float(value))

    def count(self, name: str, n: float = 1, **dims: str) -> None:
        """Add ``n`` to a count (summed within the invocation); ``dims``: ReasonClass, Verdict."""
        if n:
            self._add(name, COUNT, n, dims, True)

    def seconds(self, name: str, value: float, **dims: str) -> None:
        """One observation of a duration (each kept: CloudWatch computes the percentiles)."""
        self._add(name, SECONDS, max(0.0, value), dims, False)

    def gauge(self, name: str, value: float, unit: str = COUNT) -> None:
        """A level measured now (pending requests, the oldest one's age)."""
        self._add(name, unit, value, {}, False)

    def flush(self) -> int:
        """Write what was collected as EMF lines on stdout and start over; the line count.
        A metric with a dimension is written under [service] too, so an alarm can read the total."""
        from aws_lambda_powertools.metrics import EphemeralMetrics

        with self._lock:
            collected, self._values = self._values, defaultdict(lambda: defaultdict(list))
        lines = 0
        for dims, metrics in sorted(collected.items()):
            emf = EphemeralMetrics(namespace=self.namespace, service=self.service)
            if dims:
                emf.add_dimensions(service=self.service, **dict(dims))
            for (name, unit), values in sorted(metrics.items()):
                for value in values:
                    emf.add_metric(name=name, unit=unit, value=value)
            emf.flush_metrics()
            lines += 1
        return lines


def watch_launches(sagemaker, telemetry: Telemetry) -> None:
    """Count CreateTrainingJob answers that were throttled (`LaunchThrottles`, each one botocore
    retried or gave up on) and the retries botocore made (`LaunchRetries`), from the client's
    own events: the launcher's code path stays as it is."""
    def on_response(response: Any = None, **kwargs: Any) -> None:
        parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else {}
        if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") in THROTTLING_CODES:
            telemetry.count("LaunchThrottles")

    def after_call(parsed: Any = None, **kwargs: Any) -> None:
        retries = parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0) if isinstance(parsed, dict) else 0
        telemetry.count("LaunchRetries", retries)

    sagemaker.meta.events.register("needs-retry.sagemaker.CreateTrainingJob", on_response)
    sagemaker.meta.events.register("after-call.sagemaker.CreateTrainingJob", after_call)
