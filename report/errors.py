"""The report package's one root exception."""

from __future__ import annotations


class ReportError(Exception):
    """A page cannot be written: the job or folder named is not one (says which, and what was expected)."""
