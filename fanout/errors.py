"""Errors of the fanout package: one root, a few specific kinds.

Every message says what was wrong, what is valid, and where the value came from (file, line,
task, field), so an operator can fix the input without reading code.
"""

from __future__ import annotations

from typing import Sequence


class FanoutError(Exception):
    """Root of every error fanout raises on purpose (the CLI prints it as one line, exit 2)."""


class TaskListError(FanoutError):
    """A task list that cannot be used; ``problems`` lists every problem, most important first."""

    def __init__(self, problems: Sequence[str], source: str = "<tasks>"):
        self.problems = list(problems)
        self.source = source
        shown = "; ".join(self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"{len(self.problems)} problem(s) in {source}: {shown}{more}")


class PlanError(FanoutError):
    """The tasks cannot be assigned to hosts as asked (bad instance count, partial host fields)."""


class InstanceError(FanoutError):
    """An instance type this project does not know, or a job that cannot fit or fill it
    (unknown type, more slots than GPUs, settings whose training exceeds the GPU's memory)."""


class FamilyError(FanoutError):
    """A model family fanout cannot learn or does not know (names where it looked, what is valid)."""


class RequestError(FanoutError):
    """A CreateTrainingJob request would break an API limit or an option combination."""


class LaunchError(FanoutError):
    """SageMaker refused a job for a reason retrying will not fix (or retries ran out)."""


class CapacityError(LaunchError):
    """ResourceLimitExceeded: the account has no room; the tasks go back to the queue."""


class ConflictError(FanoutError):
    """A conditional write lost a race, or a job name is taken by a job that is not ours."""


class SettingsError(FanoutError):
    """A required FANOUT_* environment variable is missing or malformed."""


class EventError(FanoutError):
    """An event (or one of its records) a handler cannot act on: not the shape AWS delivers."""


class PublishError(FanoutError):
    """Lifecycle events EventBridge did not take after retries; they stay in the request's
    outbox (a redelivery or the scheduled launcher publishes them), and the record is failed."""
