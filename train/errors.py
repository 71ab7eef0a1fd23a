"""Exceptions of the ``train`` package: one root, a few specific ones.

Messages say what was wrong, what is valid, and where the value came from (which flag,
config key or file), so the CLI and the container can show them as they are.
"""


class TrainError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(TrainError):
    """A bad config value or an unknown key; the message names the field and the valid values."""


class DataError(TrainError):
    """A bad image or folder; the message names the file."""


class Interrupted(TrainError):
    """A stop was requested; the resume state was saved before this was raised."""

    def __init__(self, message: str, step: int = 0):
        super().__init__(message)
        self.step = step
