"""The serve package's errors: each carries the HTTP status the request gets back."""

from __future__ import annotations


class ServeError(Exception):
    """Root of the package's errors; ``status`` is the HTTP status a request failing with it gets."""

    status = 500


class BadRequest(ServeError):
    """The body is not a JSON object (400)."""

    status = 400


class UnknownModel(ServeError):
    """The model the request names does not exist where it points (404)."""

    status = 404


class TooLarge(ServeError):
    """A model object or a request body over its size limit (413)."""

    status = 413


class Unprocessable(ServeError):
    """Bad options, a LoRA of another family or base, a malformed LoRA (422)."""

    status = 422


class NotReady(ServeError):
    """The base pipeline is still loading, or failed to load (503)."""

    status = 503


class ConfigError(ServeError):
    """The server's own settings are wrong (raised at start, before anything loads)."""
