"""Hyperparameter values and names: the one decoder of string values, the one unknown-name check.

SageMaker passes every hyperparameter as a string, and the SageMaker Python SDK JSON-encodes
them (``"400"`` arrives as ``"\\"400\\""``); the CLI, JSON files and tests give typed values.
``decode`` turns any of these into the declared type (bool, int, float, str, a tuple of strings,
or a JSON object), the same way for every consumer
(``TrainConfig``, ``ExportConfig``, the container's ``ContainerConfig``), so ``"on"`` means
the same everywhere. ``reject_unknown`` is the one place that refuses names nobody declared,
listing the valid ones. (``fanout`` cannot import ``train``; its copies are kept equal by tests.)
"""

from __future__ import annotations

import json
import math
import typing
from typing import Any, Iterable, Mapping

from train.errors import ConfigError
from fanout.redaction import shown

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def unquote(value: str) -> str:
    """Strip one layer of JSON quoting (the SageMaker SDK's): '"400"' -> '400'."""
    s = value.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        try:
            decoded = json.loads(s)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def decode(value: Any, tp: Any) -> Any:
    """``value`` (typed, a bare string or a JSON-quoted one) as ``tp``: bool, int, float, str, a
    tuple of strings or a dict (a JSON object). Raises ValueError / TypeError saying what was expected."""
    if isinstance(value, str):
        value = unquote(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in TRUE:
            return True
        if s in FALSE:
            return False
        raise ValueError(f"expected true or false ({'/'.join(TRUE)} or {'/'.join(FALSE)})")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError("expected an integer, got a boolean")
        number = _number(value) if not isinstance(value, int) else value
        if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
            raise ValueError("expected a whole number")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError("expected a number, got a boolean")
        number = _number(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value
    if tp is dict or typing.get_origin(tp) is dict:
        return _object(value)
    return _strings(value)


def _number(value: Any) -> float:
    """float(value), with an error that does not repeat the value (reasons travel far: redaction)."""
    try:
        return float(value)
    except ValueError:
        raise ValueError("expected a number") from None


def _object(value: Any) -> dict:
    """A JSON object: a mapping, or its JSON text ('' is an empty object)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return dict(value)


def _strings(value: Any) -> tuple[str, ...]:
    """tuple[str, ...]: a list, a JSON array in a string, or one string."""
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            value = json.loads(s)
        else:
            return (value,) if value else ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def reject_unknown(values: Mapping[str, Any] | Iterable[str], valid: Iterable[str], *, source: str,
                   what: str = "key", hint: str = "", error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` naming ``source`` and every unknown name, listing the valid ones."""
    valid = set(valid)
    unknown = sorted(set(values) - valid)
    if unknown:
        raise error(f"{source}: unknown {what}(s) {', '.join(map(shown, unknown))}{hint}; "
                    f"valid {what}s: {', '.join(sorted(valid))}")
