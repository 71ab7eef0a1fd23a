"""What the serverless path does with a trained model's quality verdict (pure).

The container writes `quality` into the task's manifest.json and status.json (issue 17):
{"verdict", "reasons", "scores": {"dino", "clip_i", "clip_t", "drift", "copying", "identity",
"faces_per_image"}, "images", "seconds"}. Absent (no `eval` channel, older images) it is
`not_evaluated`. The request then becomes:

  passed, needs_review, not_evaluated -> COMPLETED, "Model Ready" (the verdict in the event
                                         and the models table: the app decides what to show)
  failed_quality, on_quality_fail=keep -> NEEDS_REVIEW, "Model Needs Review" (a person looks)
  failed_quality, on_quality_fail=retry -> PENDING again with another seed and step count,
                                         "Request Retried", at most FANOUT_MAX_QUALITY_RETRIES
                                         times, then NEEDS_REVIEW
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from fanout.hyperparameters import decode_value

PASSED, NEEDS_REVIEW, FAILED_QUALITY, NOT_EVALUATED = "passed", "needs_review", "failed_quality", "not_evaluated"
VERDICTS = (PASSED, NEEDS_REVIEW, FAILED_QUALITY, NOT_EVALUATED)
SCORES = ("dino", "clip_i", "clip_t", "drift", "copying", "identity")
UPPER_BOUNDS = ("drift", "copying")          # a gate's maximum; the others are minimums
# Which way a retrain should move: a LoRA that copies, bleeds into other prompts or ignores the
# prompt trained too long; one that never learned the subject trained too little.
OVERFIT, UNDERFIT = ("drift", "copying", "clip_t"), ("dino", "clip_i", "identity")
FEWER_STEPS, MORE_STEPS = 0.7, 1.5
DEFAULT_STEPS = 400          # train.config.TrainConfig.max_train_steps (fanout cannot import train)
MAX_STORED_REASONS, MAX_REASON_CHARS = 20, 300


@dataclass(frozen=True)
class Quality:
    verdict: str
    reasons: tuple[str, ...] = ()
    scores: Mapping[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.verdict == FAILED_QUALITY


def read_quality(value: Any) -> Quality:
    """The verdict, reasons and scores of a manifest's or status file's `quality` (absent or
    not an object: not_evaluated; an unknown verdict is kept as given, never a failure)."""
    if not isinstance(value, Mapping):
        return Quality(NOT_EVALUATED)
    verdict = value.get("verdict") if isinstance(value.get("verdict"), str) and value.get("verdict") else NOT_EVALUATED
    raw = value.get("reasons")
    reasons = tuple(str(r) for r in raw) if isinstance(raw, list) else ()
    scores = value.get("scores") if isinstance(value.get("scores"), Mapping) else None
    return Quality(verdict, reasons, {k: _number(v) for k, v in scores.items() if k in SCORES + ("faces_per_image",)}
                   if scores else None)


def _number(value: Any) -> Any:
    """A finite number (or a list of them) as JSON has it; anything else is None."""
    if isinstance(value, list):
        return [_number(v) for v in value[:100]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def model_fields(quality: Quality) -> dict[str, Any]:
    """The models-table attributes of a verdict (DynamoDB numbers are Decimals; bounded sizes)."""
    fields: dict[str, Any] = {"verdict": quality.verdict}
    if quality.scores:
        fields["scores"] = json.loads(json.dumps(quality.scores), parse_float=Decimal)
    if quality.reasons:
        fields["quality_reasons"] = [r[:MAX_REASON_CHARS] for r in quality.reasons[:MAX_STORED_REASONS]]
    return fields


def failure_reason(quality: Quality) -> str:
    return "model failed its quality gate: " + ("; ".join(quality.reasons) or "no reason given")


def failing_scores(quality: Quality, gate: Mapping[str, Any]) -> list[str]:
    """The scores on the wrong side of their threshold (minimum, maximum for drift/copying)."""
    failing = []
    for name, limit in gate.items():
        value = (quality.scores or {}).get(name)
        if isinstance(value, (int, float)) and isinstance(limit, (int, float)) and not isinstance(limit, bool):
            if (value > limit) if name in UPPER_BOUNDS else (value < limit):
                failing.append(name)
    return failing


def task_setting(task: Mapping[str, Any], job_hp: Mapping[str, Any], name: str, default: Any) -> Any:
    """A hyperparameter as the task runs with it: the task's own, else the job's, else ``default``."""
    hp = task.get("hyperparameters") if isinstance(task.get("hyperparameters"), Mapping) else {}
    value = hp.get(name, job_hp.get(name))
    if value is None:
        return default
    try:
        return decode_value(name, value)
    except ValueError:
        return default


def retrain(task: dict, job_hp: Mapping[str, Any], quality: Quality, request_key: str, attempt: int) -> tuple[dict, dict]:
    """(the task to train next, this attempt's record): another seed (derived from the request
    and attempt, so a redelivered event picks the same one) and a step count moved the way the
    failing scores point (fewer for overfit signals, more for underfit or unknown ones)."""
    gate = task_setting(task, job_hp, "quality_gate", {}) or {}
    failing = failing_scores(quality, gate)
    steps = task_setting(task, job_hp, "max_train_steps", DEFAULT_STEPS)
    factor = FEWER_STEPS if any(s in OVERFIT for s in failing) else MORE_STEPS
    new_steps = max(1, round(steps * factor))
    seed = int(hashlib.sha256(f"{request_key}:{attempt}".encode()).hexdigest()[:8], 16) % 2**31
    hp = {**(task.get("hyperparameters") or {}), "seed": seed, "max_train_steps": new_steps}
    record = {"attempt": attempt, "verdict": quality.verdict, "failing": failing,
              "reasons": [r[:MAX_REASON_CHARS] for r in quality.reasons[:MAX_STORED_REASONS]],
              "seed": task_setting(task, job_hp, "seed", 0), "max_train_steps": steps,
              "next": {"seed": seed, "max_train_steps": new_steps}}
    return {**task, "hyperparameters": hp}, record
