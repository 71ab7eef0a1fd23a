"""Export errors. They subclass the package's `TrainError`/`ConfigError` (train/errors.py), so
the container records a failed export like any other task failure."""

from __future__ import annotations

try:
    from train.errors import ConfigError, TrainError
except ImportError:  # train/errors.py not committed yet in this tree
    class TrainError(Exception):
        """Root of the train package's errors."""

    class ConfigError(TrainError):
        """A bad configuration value."""


class ExportError(TrainError):
    """An export could not be written or verified."""


class ExportConfigError(ConfigError, ExportError):
    """A bad export option (unknown format, bad dtype...): the message lists the valid values."""
