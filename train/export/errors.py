"""Export errors. They subclass the package's `TrainError`/`ConfigError`, so the container and
the CLIs report a failed export like any other task failure."""

from __future__ import annotations

from train.errors import ConfigError, TrainError


class ExportError(TrainError):
    """An export could not be written or verified."""


class ExportConfigError(ConfigError, ExportError):
    """A bad export option (unknown format, bad dtype...): the message lists the valid values."""
