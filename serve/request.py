"""One invocation's body, checked: ``parse_request(body, limits) -> Generation``. Pure logic.

Every problem is collected and reported at once (422), each naming its field, what was sent
and what is valid; a field the contract does not know is a problem too (a misspelt
``num_inference_step`` must not silently fall back to the default).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Mapping

from fanout.redaction import shown
from serve.config import OUTPUT_FORMATS, FamilyDefaults
from serve.errors import BadRequest, Unprocessable

FIELDS = ("model", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width", "seed",
          "num_images", "output_format")
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """What this server accepts, and the base's own values for what a request leaves out."""

    max_images: int
    max_steps: int
    max_side: int
    size_multiple: int              # height and width must be multiples of this (VAE x patch size)
    default_height: int
    default_width: int
    defaults: FamilyDefaults


@dataclass(frozen=True)
class Generation:
    model: str
    prompt: str
    negative_prompt: str | None
    steps: int
    guidance: float
    height: int
    width: int
    seed: int
    count: int
    output_format: str

    def parameters(self) -> dict[str, Any]:
        """What was rendered, echoed in the response (defaults filled in)."""
        return {"num_inference_steps": self.steps, "guidance_scale": self.guidance, "height": self.height,
                "width": self.width, "seed": self.seed, "num_images": self.count, "output_format": self.output_format}


def decode_body(raw: bytes) -> dict:
    """The body as a JSON object (400 when it is not one)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the body is not JSON ({exc}); send a JSON object such as "
                         '{"model": "s3://bucket/models/user/request/", "prompt": "a photo of sks dog"}') from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body is a JSON {type(body).__name__}, not an object with fields {', '.join(FIELDS)}")
    return body


def parse_request(body: Mapping[str, Any], limits: Limits) -> Generation:
    problems: list[str] = []
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    model = _text(body, "model", problems, required=True, limit=2048)
    prompt = _text(body, "prompt", problems, required=True, limit=MAX_PROMPT_CHARS)
    negative = _text(body, "negative_prompt", problems, required=False, limit=MAX_PROMPT_CHARS)
    if negative is not None and not limits.defaults.negative_prompt:
        problems.append("negative_prompt: this base's pipeline takes no negative prompt (it is guidance-distilled "
                        "or flow-matching without classifier-free guidance); leave it out")
    steps = _int(body, "num_inference_steps", limits.defaults.steps, 1, limits.max_steps, problems)
    guidance = _float(body, "guidance_scale", limits.defaults.guidance, 0.0, 50.0, problems)
    height = _side(body, "height", limits.default_height, limits, problems)
    width = _side(body, "width", limits.default_width, limits, problems)
    seed = _int(body, "seed", None, 0, MAX_SEED, problems)
    count = _int(body, "num_images", 1, 1, limits.max_images, problems)
    fmt = body.get("output_format", "png")
    if fmt not in OUTPUT_FORMATS:
        problems.append(f"output_format: {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if problems:
        raise Unprocessable("; ".join(problems))
    return Generation(model=model, prompt=prompt, negative_prompt=negative, steps=steps, guidance=guidance,
                      height=height, width=width, seed=random.randrange(2**31) if seed is None else seed,
                      count=count, output_format=fmt)


def _text(body, name: str, problems: list[str], *, required: bool, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            problems.append(f"{name}: required (a string)")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        problems.append(f"{name}: expected a non-empty string, got {shown(value)}")
        return None
    if len(value) > limit:
        problems.append(f"{name}: {len(value)} characters, more than the {limit} accepted")
        return None
    return value


def _int(body, name: str, default, low: int, high: int, problems: list[str]):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        problems.append(f"{name}: expected an integer, got {shown(value)}")
        return default
    if not low <= value <= high:
        problems.append(f"{name}: {value} is outside {low}..{high}")
        return default
    return int(value)


def _float(body, name: str, default: float, low: float, high: float, problems: list[str]) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        problems.append(f"{name}: expected a number, got {shown(value)}")
        return default
    if not low <= value <= high:
        problems.append(f"{name}: {value} is outside {low}..{high}")
        return default
    return float(value)


def _side(body, name: str, default: int, limits: Limits, problems: list[str]) -> int:
    value = _int(body, name, default, limits.size_multiple, limits.max_side, problems)
    if value % limits.size_multiple:
        problems.append(f"{name}: {value} is not a multiple of {limits.size_multiple} "
                        f"(this base's VAE and patch size; e.g. {value - value % limits.size_multiple or limits.size_multiple})")
    return value
