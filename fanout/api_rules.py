"""CreateTrainingJob as SageMaker will judge it: the rules of the service model botocore ships.

botocore's own validator (``botocore.validate.ParamValidator``) checks types, required members
and minimums only; SageMaker's API also refuses values over a ``max``, outside an ``enum`` or
not matching a ``pattern``, which without this module a job learns only from CreateTrainingJob's
400 answer (a bare role name, a tag value with '!', a KMS alias with '.', an instance type that
does not exist). The rules are read from the model, not copied: a botocore upgrade that changes
them changes what is checked here.

Patterns are Java regular expressions matched against the whole value. The one Java feature
they use that Python's ``re`` lacks is the ``\\p{...}`` class: a Unicode category (``\\p{L}``:
letters, ``\\p{N}`` numbers, ``\\p{Z}`` separators, as in tag keys and values) is expanded into
explicit ranges from ``unicodedata``; a POSIX class (``\\p{Alnum}``, as in Lambda ARNs) is
US-ASCII only in Java and becomes its ASCII ranges. Any other name raises ValueError rather
than becoming an empty class.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Any, Mapping

# Human words for the shapes users meet; the rule itself is always the model's.
HINTS = {
    "RoleArn": "an IAM role ARN, arn:aws:iam::<12-digit account>:role/<name>, not a bare role name",
    "KmsKeyId": "a KMS key id or key ARN, an alias ARN, or alias/<name> without '.'",
    "TagKey": "letters, digits, spaces and _ . : / = + - @",
    "TagValue": "letters, digits, spaces and _ . : / = + - @",
    "TrainingJobName": "letters, digits and '-', starting and ending with a letter or digit",
    "S3Uri": "s3://bucket/key",
}
# Not in the model but refused by every AWS tagging API (docs: "Tag naming limits").
RESERVED_TAG_PREFIX = "aws:"
# No letter, number or separator is assigned above U+3FFFF (planes 4-13 are unassigned, 14
# holds format characters and variation selectors, 15-16 private use), so the scan stops there.
_LAST_CATEGORIZED = 0x3FFFF
# Java's POSIX classes the patterns may use (java.util.regex.Pattern: US-ASCII only), as class bodies.
POSIX_CLASSES = {"Lower": "a-z", "Upper": "A-Z", "Alpha": "a-zA-Z", "Digit": "0-9", "Alnum": "a-zA-Z0-9"}
# Unicode general categories \p{X} may name: a major class (one letter) or a category (two letters).
UNICODE_CATEGORIES = frozenset("L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po "
                               "S Sm Sc Sk So Z Zs Zl Zp".split())


@functools.lru_cache(maxsize=None)
def operation_input(service: str = "sagemaker", operation: str = "CreateTrainingJob"):
    """The input shape of ``operation`` from botocore's bundled model (no session, no network)."""
    from botocore.loaders import create_loader
    from botocore.model import ServiceModel

    model = ServiceModel(create_loader().load_service_model(service, "service-2"), service_name=service)
    return model.operation_model(operation).input_shape


@functools.lru_cache(maxsize=None)
def _category_ranges(prefix: str) -> str:
    """A regex class body holding every code point whose general category starts with ``prefix``."""
    parts, start = [], None
    for cp in range(min(sys.maxunicode, _LAST_CATEGORIZED) + 1):
        inside = unicodedata.category(chr(cp)).startswith(prefix)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            parts.append((start, cp - 1))
            start = None
    if start is not None:
        parts.append((start, _LAST_CATEGORIZED))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in parts)


def _class_body(name: str, pattern: str) -> str:
    """The regex class body of Java's ``\\p{name}``."""
    if name in POSIX_CLASSES:
        return POSIX_CLASSES[name]
    if name in UNICODE_CATEGORIES:
        return _category_ranges(name)
    raise ValueError(f"\\p{{{name}}} in the API pattern {pattern!r} is not a class fanout.api_rules translates "
                     f"(Unicode categories, or {', '.join(POSIX_CLASSES)})")


@functools.lru_cache(maxsize=None)
def compiled(pattern: str) -> re.Pattern:
    """A Java pattern of the model as a Python regex (``\\p{X}`` expanded; matched whole)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        category = re.match(r"\\p\{(\w+)\}", pattern[i:])
        if category:
            ranges = _class_body(category.group(1), pattern)
            out.append(ranges if in_class else f"[{ranges}]")
            i += category.end()
            continue
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        in_class = True if char == "[" else False if char == "]" else in_class
        out.append(char)
        i += 1
    return re.compile("".join(out), re.ASCII)      # Java's \d, \w, \s are ASCII-only


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _string_problems(value: str, shape, path: str) -> list[str]:
    meta, out = shape.metadata, []
    hint = HINTS.get(shape.name)
    if "max" in meta and len(value) > meta["max"]:
        out.append(f"{path} is {len(value)} characters; the API allows at most {meta['max']}")
    if meta.get("enum") and value not in meta["enum"]:
        out.append(f"{path} {_short(value)} is not one of the API's values")
    elif "pattern" in meta and not compiled(meta["pattern"]).fullmatch(value):
        out.append(f"{path} {_short(value)} does not match the API's pattern {meta['pattern']}"
                   + (f" ({hint})" if hint else ""))
    elif "min" in meta and len(value) < meta["min"]:
        out.append(f"{path} {_short(value)} is shorter than the API's minimum of {meta['min']} characters"
                   + (f" ({hint})" if hint else ""))
    if shape.name == "TagKey" and value.lower().startswith(RESERVED_TAG_PREFIX):
        out.append(f"{path} {_short(value)} starts with '{RESERVED_TAG_PREFIX}', which AWS reserves for its own tags")
    return out


def _label(index: int, item: Any) -> str:
    """A list item's name in messages: a tag by its key, anything else by its index."""
    key = item.get("Key") if isinstance(item, Mapping) else None
    return _short(key) if isinstance(key, str) else str(index)


def problems(value: Any, shape, path: str) -> list[str]:
    """Every rule of ``shape`` that ``value`` breaks, naming the member by its path."""
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure" and isinstance(value, Mapping):
        return [p for name, member in shape.members.items() if name in value
                for p in problems(value[name], member, f"{path}.{name}" if path else name)]
    if kind == "list" and isinstance(value, (list, tuple)):
        out = [f"{path} has {len(value)} items; the API allows at most {meta['max']}"] if len(value) > meta.get("max", len(value)) else []
        return out + [p for i, item in enumerate(value) for p in problems(item, shape.member, f"{path}[{_label(i, item)}]")]
    if kind == "map" and isinstance(value, Mapping):
        out = [f"{path} has {len(value)} entries; the API allows at most {meta['max']}"] if len(value) > meta.get("max", len(value)) else []
        for key, item in value.items():
            out += problems(key, shape.key, f"{path} key {_short(key)}") + problems(item, shape.value, f"{path}[{key!r}]")
        return out
    if kind == "string" and isinstance(value, str):
        return _string_problems(value, shape, path)
    if kind in ("integer", "long") and isinstance(value, int) and not isinstance(value, bool):
        # the minimum is botocore's ParamValidator's (run beside this): only the maximum here
        if "max" in meta and value > meta["max"]:
            return [f"{path} is {value}; the API allows {meta.get('min', '-inf')}..{meta['max']}"]
    return []


def request_problems(request: Mapping[str, Any], operation: str = "CreateTrainingJob") -> list[str]:
    """What SageMaker's API would refuse in ``request`` by its model's rules."""
    return problems(request, operation_input("sagemaker", operation), "")


def member_problems(path: str, value: Any, operation: str = "CreateTrainingJob") -> list[str]:
    """The rules of one member, e.g. ``member_problems("RoleArn", arn)`` or
    ``member_problems("ResourceConfig.InstanceType", name)``: checks a setting before a request exists."""
    shape = operation_input("sagemaker", operation)
    for name in path.split("."):
        shape = shape.members[name]
    return problems(value, shape, path)
