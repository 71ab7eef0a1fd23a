"""The quality gate: thresholds per score, and the verdict they give (pure, no torch).

``quality_gate`` is a JSON object of score name -> limit. For ``drift`` and ``copying`` the
limit is a maximum, for every other score a minimum. A task's scores against its gate give:

    failed_quality  a gated score is over its maximum or under its minimum
    needs_review    nothing failed, but a gated score could not be measured (no face found),
                    or, with ``identity`` gated, an instance photo looks like somebody else
                    (its face's similarity to the others' centroid is under the identity limit)
    passed          every gated score within its limit; also with an empty gate, the default:
                    scores are then reported only, and the reasons say so
    not_evaluated   no scorer models were given (or the evaluation itself could not run)

The serverless path keeps its own copy of the rules (fanout/hyperparameters.py, kept equal by
tests/container/test_hyperparameter_rules.py).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

SCORES = ("dino", "clip_i", "clip_t", "drift", "copying", "identity")
MAXIMA = frozenset({"drift", "copying"})   # lower is better: the limit is a maximum
VERDICTS = ("passed", "needs_review", "failed_quality", "not_evaluated")
ON_QUALITY_FAIL = ("keep", "retry")
LABELS = {"dino": "subject DINO", "clip_i": "subject CLIP-I", "clip_t": "prompt CLIP-T", "drift": "drift",
          "copying": "copying", "identity": "identity"}
REPORT_ONLY = "no quality_gate set: the scores are reported, not judged"


def gate_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid quality gate (None: valid). Accepts a mapping or its JSON text."""
    try:
        parse_gate(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_gate(value: Any) -> dict[str, float]:
    """A gate from a mapping or JSON text ('' means none); ValueError says what is wrong and what is valid."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a JSON object of score limits, e.g. "
                             '{"dino": 0.55, "copying": 0.95}') from None
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a JSON object of score limits, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in SCORES)
    if unknown:
        raise ValueError(f"unknown score(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SCORES)}")
    gate = {}
    for name, limit in value.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
            raise ValueError(f"{name}: the limit must be a number, got {limit!r}")
        if not -1.0 <= limit <= 1.0:
            raise ValueError(f"{name}: the limit must be between -1 and 1 (scores are cosines), got {limit}")
        gate[name] = float(limit)
    return {name: gate[name] for name in SCORES if name in gate}


def judge(scores: Mapping[str, Any], gate: Mapping[str, float], *, unmeasured: Mapping[str, str] | None = None,
          nearest_photo: str | None = None,
          instance_photos: Sequence[Mapping[str, Any]] = ()) -> tuple[str, list[str]]:
    """(verdict, reasons) of ``scores`` under ``gate``: failures first, then what needs a look."""
    if not gate:
        return "passed", [REPORT_ONLY]
    failed, review = [], []
    for name, limit in gate.items():
        value = scores.get(name)
        if value is None:
            why = (unmeasured or {}).get(name, "no value")
            review.append(f"{LABELS[name]} not measured: {why}")
        elif name == "copying" and value > limit:
            failed.append(f"copies instance photo {nearest_photo}: {value:.2f} > {limit:.2f}")
        elif name in MAXIMA and value > limit:
            failed.append(f"{LABELS[name]} {value:.2f} > {limit:.2f}")
        elif name not in MAXIMA and value < limit:
            failed.append(f"{LABELS[name]} {value:.2f} < {limit:.2f}")
    if "identity" in gate:
        limit = gate["identity"]
        for photo in instance_photos:
            loo = photo.get("identity_loo")
            if loo is not None and loo < limit:
                review.append(f"instance photo {photo['file']} may show somebody else: its face matches the "
                              f"others' {loo:.2f} < {limit:.2f}")
    if failed:
        return "failed_quality", failed + review
    if review:
        return "needs_review", review
    return "passed", [f"every gated score within its limit ({', '.join(gate)})"]
