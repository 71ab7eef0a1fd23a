"""Recipes: the settings a task gets from its model family when it sets nothing.

Every family declares ``recipe`` (TrainConfig field -> value), ``variant_recipes`` (overrides
for a variant ``detect_variant`` finds in the base folder) and ``recipe_sources`` (where each
number comes from; ``"<variant>:<field>"`` keys name a variant's own source). ``resolve``
fills every setting the task, the job, a flag or a config file did not set (``cfg.given``)
from the family's recipe and records what it took (``cfg.recipe``), which the task's log line
and ``manifest.json["recipe"]`` show. A value anyone set always wins.

Two settings depend on the machine, not only on the family: the mixed precision (bf16 where
the GPU has it, fp16 on an older CUDA GPU, fp32 on a CPU) and the quantized base (a memory fit
for the family's target GPU; a CPU has no accelerator memory to fit, so it trains unquantized).
The base model is loaded once per host in the job's resolved precision, so a job and its tasks
resolve these two the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from train.config import TrainConfig

# Prodigy adapts its own step size: diffusers' README_flux.md ("with prodigy it's generally good
# practice to set --learning_rate=1.0"). A task choosing prodigy without a learning rate gets it.
PRODIGY_LR = 1.0
PRODIGY_SOURCE = "diffusers examples/dreambooth/README_flux.md: with prodigy set --learning_rate=1.0"


@dataclass(frozen=True)
class Device:
    """What a recipe needs to know of the machine that trains."""

    kind: str = "cpu"   # torch device type: "cuda", "cpu", "mps"
    bf16: bool = False  # the accelerator computes in bfloat16

    @classmethod
    def current(cls) -> "Device":
        import torch

        if torch.cuda.is_available():
            return cls("cuda", bool(torch.cuda.is_bf16_supported()))
        return cls("cpu")

    def precision(self, wanted: str) -> str:
        """``wanted`` on this machine: bf16 where the GPU has it (Ampere and later, every g5, g6,
        g6e, p4 and p5 instance), fp16 on an older CUDA GPU (T4, V100), fp32 ("no") on a CPU."""
        if wanted == "no" or self.kind != "cuda":
            return "no"
        return "fp16" if wanted == "bf16" and not self.bf16 else wanted

    def quantization(self, wanted: str) -> str:
        """A quantized base is a fit for accelerator memory; on a CPU the base stays as it is."""
        return wanted if self.kind == "cuda" else "none"


@dataclass(frozen=True)
class RecipeUse:
    """What one resolution took from a family's recipe."""

    family: str
    variant: str
    values: Mapping[str, Any] = field(default_factory=dict)   # setting -> value taken from the recipe
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> where the value comes from
    overridden: tuple[str, ...] = ()                           # recipe settings the task or job set
    warning: str | None = None                                 # the family's word on this variant

    @property
    def name(self) -> str:
        return f"{self.family}/{self.variant}" if self.variant else self.family

    def without(self, names: Iterable[str]) -> "RecipeUse":
        """The same use with ``names`` no longer from the recipe (a caller set them afterwards)."""
        drop = set(names) & set(self.values)
        return replace(self, values={k: v for k, v in self.values.items() if k not in drop},
                       sources={k: v for k, v in self.sources.items() if k not in drop},
                       overridden=tuple(sorted(set(self.overridden) | drop)))

    def to_manifest(self) -> dict[str, Any]:
        """``manifest.json["hyperparameters"]["recipe"]``: what came from the recipe (with
        sources), what the task or job set instead, and the family's warning on this variant."""
        out = {"family": self.family, "variant": self.variant, "from_recipe": dict(self.values),
               "sources": dict(self.sources), "set_by_task_or_job": list(self.overridden)}
        if self.warning:
            out["warning"] = self.warning
        return out

    def summary(self) -> str:
        """One log line: ``recipe flux/dev: rank=16, learning_rate=0.0001, ...``."""
        taken = ", ".join(f"{k}={v}" for k, v in self.values.items()) or "nothing (every setting was given)"
        kept = f"; set by the task or job: {', '.join(self.overridden)}" if self.overridden else ""
        return f"recipe {self.name}: {taken}{kept}"


def recipe_for(family, variant: str = "") -> dict[str, Any]:
    """The family's recipe with ``variant``'s overrides (before the machine adapts it)."""
    return {**family.recipe, **family.variant_recipes.get(variant, {})}


def source_of(family, variant: str, name: str) -> str:
    return family.recipe_sources.get(f"{variant}:{name}") or family.recipe_sources.get(name, "")


def resolve(cfg: TrainConfig, family, variant: str = "", *, device: Device | None = None) -> TrainConfig:
    """``cfg`` with every setting it does not give taken from ``family``'s recipe for
    ``variant`` on ``device`` (default: this machine); ``cfg.recipe`` says what was taken."""
    device = device or Device.current()
    wanted = recipe_for(family, variant)
    values, sources = dict(wanted), {k: source_of(family, variant, k) for k in wanted}
    for name, adapt in (("mixed_precision", device.precision), ("base_quantization", device.quantization)):
        if name in values and adapt(values[name]) != values[name]:
            sources[name] += f" (the recipe's {values[name]}; this {device.kind} gets {adapt(values[name])})"
            values[name] = adapt(values[name])
    optimizer = cfg.optimizer if "optimizer" in cfg.given else values.get("optimizer", cfg.optimizer)
    if optimizer == "prodigy":
        values["learning_rate"], sources["learning_rate"] = PRODIGY_LR, PRODIGY_SOURCE
    taken = {k: v for k, v in values.items() if k not in cfg.given}
    use = RecipeUse(family.name, variant, taken, {k: sources[k] for k in taken},
                    overridden=tuple(sorted(set(values) & cfg.given)), warning=family.variant_warning(variant))
    return cfg.filled(taken, use, source=f"the {use.name} recipe")


def resolve_for_model(cfg: TrainConfig, model_dir: str | Path | None = None, *,
                      device: Device | None = None) -> TrainConfig:
    """``resolve`` for the family and variant of the base folder ``model_dir`` (default
    ``cfg.pretrained_model``), read from its model_index.json before any weights load."""
    from train.families import family_of, read_model_index

    path = Path(model_dir or cfg.pretrained_model)
    family = family_of(path)
    return resolve(cfg, family, family.detect_variant(path, read_model_index(path)), device=device)


def recipe_fields() -> frozenset[str]:
    """Every setting some family's recipe has (the CLI's help says so for these)."""
    from train.families import all_families

    return frozenset(k for f in all_families() for r in (f.recipe, *f.variant_recipes.values()) for k in r)
