"""What a user's value may look like in a reason, an error or a log line.

Reasons travel far: a request's FAILED reason is stored in DynamoDB and shown to whoever
reads the table, a task's error lands in status.json, summary.json, the failure file, the
report pages and CloudWatch. A value pasted into the wrong field (an AWS key as a learning
rate, a token as a task id) must not be echoed into all of them. So a reason names the field
and the rule, and shows the value only when it is short and does not look like a secret.

Standard library only, so train and container use it too (train imports nothing else of fanout;
fanout never imports train).
"""

from __future__ import annotations

import re
from typing import Any

MAX_SHOWN = 40  # characters of the repr; longer values are described, not shown

SECRET_SHAPES = re.compile(
    r"(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{12,}"   # AWS access key ids
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{16,}|github_pat_"                      # GitHub tokens
    r"|xox[abposr]-|sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{16,}|AIza[A-Za-z0-9_-]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.|-----BEGIN|\bBearer\s"                              # JWT, PEM, auth headers
    r"|(?:password|passwd|secret|token|api[_-]?key)\s*[=:]",
    re.IGNORECASE,
)
# An AWS secret access key: 40 base64 characters; other keys and hex digests: long runs of
# letters and digits without separators.
_BASE64_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{24,}")


def secret_shaped(text: str) -> bool:
    """True when ``text`` holds something that looks like a credential or a token."""
    if SECRET_SHAPES.search(text):
        return True
    for run in _BASE64_40.findall(text):
        if re.search(r"[A-Z]", run) and re.search(r"[a-z]", run) and re.search(r"[0-9/+]", run):
            return True
    for run in _TOKEN_RUN.findall(text):
        if sum(c.isalpha() for c in run) >= 3 and sum(c.isdigit() for c in run) >= 3:
            return True
    return False


def shown(value: Any) -> str:
    """``repr(value)`` when it is short and not secret-shaped; otherwise a description of it."""
    text = repr(value)
    secret = secret_shaped(text)
    if len(text) <= MAX_SHOWN and not secret:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"<a {type(value).__name__} of {size}, {'shaped like a secret' if secret else 'too long to repeat'}: not shown>"


def shown_name(name: Any) -> str:
    """A name a user typed (a key, a format) as a list shows it: bare when shown() would show it."""
    text = shown(name)
    return name if isinstance(name, str) and text == repr(name) else text
