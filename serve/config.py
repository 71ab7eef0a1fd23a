"""ServeConfig: every setting of the inference server, its default and its help text.

The CLI builds its flags from these fields (``python -m serve --base-model DIR``); SageMaker
hosting runs ``serve`` with no arguments, so every field is also read from ``SERVE_<NAME>``
(the endpoint's environment, set by infra/terraform). A flag wins over the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from serve.errors import ConfigError

ENV_PREFIX = "SERVE_"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "fp16", "bf16")
QUANTIZATIONS = ("none", "nf4", "int8")
COMPILE = ("auto", "on", "off")
OUTPUT_FORMATS = ("png", "jpeg", "webp")


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class ServeConfig:
    base_model: str = _f("/opt/ml/model", "the base: a diffusers pipeline folder (the trainer's `model` channel), "
                                          "or an s3:// prefix holding one (downloaded once at start)")
    host: str = _f("0.0.0.0", "address to listen on")
    port: int = _f(8080, "port to listen on (SageMaker's inference contract: 8080)")
    cache_size: int = _f(8, "adapters kept in memory, ready to swap in (LRU)")
    disk_cache_size: int = _f(256, "adapters kept on local disk (LRU; each is one LoRA file + its manifest)")
    cache_dir: str = _f("/tmp/lora-serve", "folder of the disk cache (and of a base downloaded from S3)")
    max_adapter_mb: float = _f(1024.0, "largest LoRA file accepted (MB); a larger one is refused with 413")
    max_rank: int = _f(64, "hotswap target rank: adapters up to this rank swap in without recompiling (smaller "
                           "ranks are zero-padded); a higher-rank adapter is refused with the reason")
    lora_targets: str = _f("", "comma-separated denoiser module names served besides the family's default LoRA "
                               "targets (an adapter on other layers is refused: hotswap cannot add layers)")
    models_root: str = _f("", "folder under which requests may name local model folders (empty: none may)")
    models_uri: str = _f("", "comma-separated s3:// prefixes requests may name models under "
                             "(e.g. s3://bucket/models/; empty: none)")
    models_table: str = _f("", "DynamoDB models table of the serverless path: a request may name a model by "
                               "'<user_id>/<model_id>' (empty: off)")
    region: str = _f("", "AWS region (empty: boto3's default chain)")
    endpoint_url: str = _f("", "AWS endpoint override (tests: a moto server)")
    device: str = _f("auto", "cpu, cuda, or auto (every CUDA GPU, one pipeline each; else the CPU)",
                     choices=DEVICES)
    dtype: str = _f("auto", "weights' dtype: auto = fp32 on CPU, the family recipe's on CUDA (bf16; fp16 on a "
                            "GPU without bf16, e.g. T4)", choices=DTYPES)
    quantization: str = _f("none", "quantize the base's large components at load (bitsandbytes, CUDA only): "
                                   "none, nf4 or int8", choices=QUANTIZATIONS)
    compile: str = _f("auto", "torch.compile the denoiser (auto: on CUDA only)", choices=COMPILE)
    max_images: int = _f(4, "most images one request may ask for (num_images)")
    max_steps: int = _f(100, "most inference steps one request may ask for")
    max_side: int = _f(2048, "largest height / width one request may ask for (pixels)")
    threads: int = _f(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        for name in ("cache_size", "disk_cache_size", "max_rank", "max_images", "max_steps", "max_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be at least 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port={self.port!r}: must be 1..65535")
        if self.max_adapter_mb <= 0:
            raise ConfigError(f"max_adapter_mb={self.max_adapter_mb!r}: must be > 0")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r}: valid values are {', '.join(choices)}")
        bad = [u for u in self.model_prefixes if not u.startswith("s3://") or u.count("/") < 3]
        if bad:
            raise ConfigError(f"models_uri: {', '.join(bad)} is not s3://BUCKET/PREFIX/")

    @property
    def max_adapter_bytes(self) -> int:
        return int(self.max_adapter_mb * 1024 * 1024)

    @property
    def model_prefixes(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.models_uri.split(",") if u.strip())

    @property
    def extra_targets(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "settings") -> "ServeConfig":
        """Typed values or strings (environment variables); unknown names are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
        typed = {}
        for name, raw in values.items():
            kind = type(fields[name].default)
            try:
                typed[name] = kind(raw) if not isinstance(raw, kind) else raw
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {name}={raw!r} is not a {kind.__name__}") from None
        return cls(**typed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServeConfig":
        """SERVE_<NAME> variables, then ``overrides`` (the command line) on top."""
        environ = os.environ if environ is None else environ
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if key.startswith(ENV_PREFIX) and raw != "":
                name = key[len(ENV_PREFIX):].lower()
                if name not in names:
                    raise ConfigError(f"environment: {key} is not a setting; valid: "
                                      f"{', '.join(ENV_PREFIX + n.upper() for n in sorted(names))}")
                values[name] = raw
        if "port" not in values and environ.get("SAGEMAKER_BIND_TO_PORT"):
            values["port"] = environ["SAGEMAKER_BIND_TO_PORT"]  # SageMaker's multi-container endpoints
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_values(values, source="environment / command line")


# What a request gets when it sets nothing: the family's recipe (train/recipes.py, the same
# numbers its previews use, per variant: klein Base 50 steps with CFG 4, the distilled klein 4
# steps without). Height and width default to the base's own native size, read from the loaded
# pipeline.
@dataclass(frozen=True)
class FamilyDefaults:
    steps: int
    guidance: float
    dtype_cuda: str
    negative_prompt: bool          # the pipeline takes a negative prompt


def family_defaults(family, variant: str, pipeline_class) -> FamilyDefaults:
    """The request defaults of ``family`` (a train.families.Family) and ``variant`` from its
    recipe; whether ``pipeline_class`` takes a negative prompt, from its own signature."""
    import inspect

    from train.config import TrainConfig
    from train.recipes import recipe_for

    recipe = {**{n: getattr(TrainConfig, n) for n in ("preview_inference_steps", "preview_guidance_scale")},
              **recipe_for(family, variant)}
    precision = recipe.get("mixed_precision", "bf16")
    return FamilyDefaults(steps=int(recipe["preview_inference_steps"]),
                          guidance=float(recipe["preview_guidance_scale"]),
                          dtype_cuda=precision if precision in ("fp16", "bf16") else "bf16",
                          negative_prompt="negative_prompt" in inspect.signature(pipeline_class.__call__).parameters)
