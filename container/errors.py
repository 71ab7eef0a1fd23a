"""Errors of the container glue.

``ContainerError`` is the root. A job-level error (this whole host cannot do its work: a
malformed task list, an unknown job hyperparameter, a missing channel, a base model that does
not load) ends the job with ``/opt/ml/output/failure``. Task-level problems are not
exceptions of this package: they are recorded in the task's status and the next task runs.
"""

from __future__ import annotations


class ContainerError(Exception):
    """Root of the container's errors: the job cannot run on this host."""


class ContractError(ContainerError):
    """The /opt/ml tree is not what SageMaker writes (config file, channel, host list)."""


class JobConfigError(ContainerError):
    """A job-level hyperparameter is unknown or has a bad value."""


class TaskSpecError(ContainerError):
    """A task's own fields in the task list are malformed (fails only that task)."""


class TaskPathError(ContainerError):
    """A path from the task list is absolute or escapes its channel (fails only that task)."""
