"""The model families this trainer supports, and which one a base folder is.

The family of a base model is read from its ``model_index.json`` (``_class_name``), before any
weights load; a pipeline class no family handles is an error listing the supported ones.
Adding a family = one module + one line in ``FAMILY_MODULES`` (see ``train/families/base.py``).
Importing this package is light (no torch): the CLI and the container validate with it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from train.errors import ConfigError, TrainError
from train.families.base import Family, ImageInfo, Noised

__all__ = ["Family", "ImageInfo", "Noised", "FAMILY_MODULES", "family_named", "family_of", "all_families",
           "check_for_model"]

# family name -> "module:Class". Order is the order of messages and docs.
FAMILY_MODULES: dict[str, str] = {
    "sd": "train.families.sd:StableDiffusion",
    "sdxl": "train.families.sdxl:StableDiffusionXL",
    "flux": "train.families.flux:Flux",
    "flux2-klein": "train.families.flux2_klein:Flux2Klein",
    "z-image": "train.families.z_image:ZImage",
    "qwen-image": "train.families.qwen_image:QwenImage",
}

_LOADED: dict[str, Family] = {}


def family_named(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise ConfigError(f"unknown model family {name!r}; supported: {', '.join(FAMILY_MODULES)}")
    if name not in _LOADED:
        module, _, cls = FAMILY_MODULES[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def all_families() -> list[Family]:
    return [family_named(n) for n in FAMILY_MODULES]


def read_model_index(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "model_index.json"
    if not path.is_file():
        raise TrainError(f"{model_dir}: not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainError(f"{path}: unreadable ({exc})") from None
    if not isinstance(index, dict):
        raise TrainError(f"{path}: expected a JSON object")
    return index


def family_of(model_dir: str | Path) -> Family:
    """The family of the diffusers pipeline folder ``model_dir`` (by ``_class_name``)."""
    index = read_model_index(model_dir)
    class_name = index.get("_class_name")
    for family in all_families():
        if class_name in family.class_names:
            family.check_components(Path(model_dir), index)
            return family
    supported = "; ".join(f"{f.name}: {', '.join(f.class_names)}" for f in all_families())
    raise ConfigError(f"{model_dir}/model_index.json: pipeline class {class_name!r} is not supported; "
                      f"supported families and pipeline classes: {supported}")


def family_for_pipeline(pipe) -> Family:
    """The family of an in-memory pipeline object (export of a pipeline built elsewhere)."""
    name = type(pipe).__name__
    for family in all_families():
        if name == family.pipeline_class or name in family.class_names:
            return family
    raise ConfigError(f"pipeline class {name!r} is not supported; supported: "
                      f"{', '.join(f.pipeline_class for f in all_families())}")


def check_for_model(cfg, model_dir: str | Path | None = None, source: str = "config") -> Family:
    """Validate ``cfg`` against the family of its base model (``cfg.pretrained_model``) before
    anything loads; returns the family."""
    family = family_of(model_dir or cfg.pretrained_model)
    family.check_config(cfg, source)
    return family
