"""What to export and how: `ExportConfig`, the single home of the export defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ExportConfigError

# Every format, in writing order, with its GPU need and families: the table in formats.py.
from .formats import FORMATS, GPU_FORMATS, MERGED_FORMATS  # noqa: E402,F401
MME_SOURCES: tuple[str, ...] = ("lora",) + MERGED_FORMATS
SAVE_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")
# Where the Triton archive's config.pbtxt expects the serving env unless told otherwise: a
# conventional path the serving image provides (docs/exports.md), so an archive loads as trained.
TRITON_ENV_DEFAULT = "/opt/tritonserver/envs/lora-fanout"


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = field(default=("lora", "kohya"), metadata=_help(
        f"formats to write into the model folder; any of {', '.join(FORMATS)}"))
    save_dtype: str = field(default="fp32", metadata=_help(
        "dtype of the LoRA weights in pytorch_lora_weights.safetensors and the kohya copy: fp32|fp16|bf16"))
    kohya_name: str = field(default="lora_kohya", metadata=_help(
        "file name (without .safetensors) of the kohya / A1111 / ComfyUI copy"))
    mme_source: str = field(default="lora", metadata=_help(
        f"what the `mme` tarball packs: {' | '.join(MME_SOURCES)} (a merged source is exported too)"))
    mme_name: str = field(default="model", metadata=_help(
        "name of the SageMaker multi-model archive, written as mme/<name>.tar.gz"))
    triton_source: str = field(default="lora", metadata=_help(
        f"what the `triton` archive packs: {' | '.join(MME_SOURCES)} (a merged source is exported too)"))
    triton_name: str = field(default="model", metadata=_help(
        "Triton model folder name inside triton/<name>.tar.gz (an endpoint may unpack it under another)"))
    triton_env: str = field(default=TRITON_ENV_DEFAULT, metadata=_help(
        "EXECUTION_ENV_PATH of the Triton Python backend: the serving env (torch, diffusers, peft, numpy<2; "
        "docs/exports.md says how to build it) as a folder or a conda-pack .tar.gz, on the Triton host; "
        "'none': the serving image's own Python"))
    triton_footprint: bool = field(default=True, metadata=_help(
        "load the triton archive once in a fresh process and record its memory per loaded user model"))
    drift_check: bool = field(default=True, metadata=_help(
        "render the validation prompts with each exported artifact and compare with the in-memory LoRA"))
    drift_steps: int = field(default=4, metadata=_help(
        "inference steps per drift render (few: the check compares, it does not need good images)"))
    drift_resolution: int = field(default=0, metadata=_help(
        "side in pixels of the drift renders (multiple of 8); 0 = the model's native size, at most 256"))
    drift_seeds: int = field(default=1, metadata=_help(
        "seeds per validation prompt for the drift renders (seed, seed+1, ...)"))
    drift_max_prompts: int = field(default=2, metadata=_help(
        "at most this many validation prompts are rendered for the drift check"))
    drift_threshold: float = field(default=8.0, metadata=_help(
        "mean absolute pixel difference (0-255 scale) above which a format is flagged in the "
        "manifest and the log"))

    def __post_init__(self) -> None:
        # Accept a comma string too ("lora,kohya"), the form hyperparameters arrive in.
        if isinstance(self.formats, str):
            object.__setattr__(self, "formats", parse_formats(self.formats))
        else:
            object.__setattr__(self, "formats", parse_formats(",".join(self.formats)))
        _check_choice("save_dtype", self.save_dtype, SAVE_DTYPES)
        _check_choice("mme_source", self.mme_source, MME_SOURCES)
        _check_choice("triton_source", self.triton_source, MME_SOURCES)
        for name in ("kohya_name", "mme_name", "triton_name"):
            value = getattr(self, name)
            if not value or "/" in value or value.startswith("."):
                raise ExportConfigError(f"{name}={value!r}: give a plain file name without '/' or leading '.'")
        for name in ("drift_steps", "drift_seeds", "drift_max_prompts"):
            if getattr(self, name) < 1:
                raise ExportConfigError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if self.drift_resolution < 0 or self.drift_resolution % 8:
            raise ExportConfigError(f"drift_resolution={self.drift_resolution!r}: must be 0 (auto) or a multiple of 8")
        if self.drift_threshold < 0:
            raise ExportConfigError(f"drift_threshold={self.drift_threshold!r}: must be >= 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "export config") -> "ExportConfig":
        """Typed values or SageMaker strings (bare `"4"` or JSON-quoted `"\\"4\\""`)."""
        from train.hyperparameters import decode, reject_unknown

        fields = {f.name: f for f in dataclasses.fields(cls)}
        reject_unknown(values, fields, source=source, error=ExportConfigError)
        typed = {}
        for name, raw in values.items():
            try:
                typed[name] = decode(raw, type(fields[name].default))
            except (TypeError, ValueError) as e:
                raise ExportConfigError(f"{source}: {name}={raw!r}: {e}") from None
        try:
            return cls(**typed)
        except ExportConfigError as e:
            raise ExportConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "formats": list(self.formats)}


def parse_formats(text: str) -> tuple[str, ...]:
    """`"kohya, lora"` -> `("lora", "kohya")`: validated, deduplicated, in writing order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad:
        raise ExportConfigError(
            f"unknown export format(s) {', '.join(map(repr, bad))}; valid formats: {', '.join(FORMATS)}")
    if not names:
        raise ExportConfigError(f"no export format given; valid formats: {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ExportConfigError(f"{name}={value!r}: valid values are {', '.join(valid)}")
