"""Write LoRA files and merged text encoders in the layout that older serving stacks read too.

Verified readers (tests/train/test_export_portable.py, in a cached old-stack env):
diffusers 0.32 + transformers 4.54 + peft 0.17, the same with diffusers 0.35, and the current
diffusers 0.42 + transformers 5 + peft 0.21. What differs between them, and what is done here:

- transformers 5 dropped CLIPTextModel's `text_model.` module level and saves without it; a
  transformers-4 reader then gets a randomly initialised text encoder (no error) from a merged
  folder, and diffusers 0.32 raises IndexError on such LoRA keys. Keys are written with
  `text_model.`, which transformers 5 maps back on load (and diffusers 0.42 for LoRA keys).
- diffusers < 0.34 ignores the adapter metadata, so a LoRA with lora_alpha != r loads at scale
  1. The per-module scale (alpha / r, or alpha / sqrt(r) for rsLoRA) is folded into lora_B and
  the metadata says alpha = r: every reader then applies exactly the trained delta.
- diffusers 0.35 builds `LoraConfig(**metadata)`, which older peft rejects with TypeError on
  fields it does not know (peft 0.21's `alora_invocation_tokens`, `arrow_config`...): only the
  fields every supported peft knows are written.

SD family only (CLIPTextModel); other families keep their own layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# LoraConfig fields known to peft 0.17 through 0.21 that describe a plain LoRA.
PORTABLE_LORA_FIELDS = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "use_dora",
                        "init_lora_weights", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "lora_bias")
CLIP_PREFIX = "text_model."
LEGACY_LAYOUT_CLASSES = ("CLIPTextModel",)


def module_scales(module, adapter: str) -> dict[str, float]:
    """`{module path: scaling}` of every LoRA layer of `module` (peft's own per-layer scale)."""
    from peft.tuners.lora import LoraLayer

    return {path: float(layer.scaling[adapter]) for path, layer in module.named_modules()
            if isinstance(layer, LoraLayer) and adapter in layer.lora_A}


def fold_scales(state: dict[str, torch.Tensor], scales: dict[str, float]) -> dict[str, torch.Tensor]:
    """peft-format state dict with each `<path>.lora_B.weight` multiplied by its module's scale."""
    out = {}
    for key, value in state.items():
        path, sep, _ = key.rpartition(".lora_B.")
        if sep and scales.get(path, 1.0) != 1.0:
            value = (value.float() * scales[path]).to(value.dtype)
        out[key] = value
    missing = {k.rpartition(".lora_B.")[0] for k in state if ".lora_B." in k} - set(scales)
    if missing:
        raise ValueError(f"no scale for LoRA layer(s) {sorted(missing)[:3]}")
    return out


def portable_metadata(config: dict, *, folded: bool) -> dict:
    """The LoraConfig dict cut to `PORTABLE_LORA_FIELDS`; when scales are folded, alpha = rank
    everywhere (scale 1) so no reader scales twice."""
    meta = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items() if k in PORTABLE_LORA_FIELDS}
    if folded:
        meta["lora_alpha"] = meta["r"]
        meta["use_rslora"] = False
        meta["alpha_pattern"] = dict(meta.get("rank_pattern") or {})
    return meta


def legacy_text_encoder_keys(state: dict, class_name: str) -> dict:
    """Text-encoder keys (no component prefix) with CLIP's `text_model.` level put back."""
    if class_name not in LEGACY_LAYOUT_CLASSES:
        return state
    return {k if k.startswith(CLIP_PREFIX) else CLIP_PREFIX + k: v for k, v in state.items()}


def write_legacy_text_encoder(component_dir: Path, class_name: str) -> None:
    """Rename the saved weights of a CLIPTextModel folder to the transformers-4 layout, in place."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if class_name not in LEGACY_LAYOUT_CLASSES:
        return
    component_dir = Path(component_dir)
    for path in sorted(component_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        save_file(legacy_text_encoder_keys(state, class_name), str(path), metadata={**metadata, "format": "pt"})
    index = component_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = legacy_text_encoder_keys(data["weight_map"], class_name)
        index.write_text(json.dumps(data, indent=2) + "\n")


# --- the trained scale, kept in the file so a re-export from it reports what was trained ------
TRAINED_KEY = "lora_fanout_trained"  # safetensors header entry: {component: {"lora_alpha", "scales"}}


def record_trained(path: Path, trained: dict[str, dict]) -> None:
    """Add `{component: {"lora_alpha": a, "scales": {module: scale}}}` to the file's header."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={**metadata, TRAINED_KEY: json.dumps(trained, sort_keys=True)})


def restore_trained(pipe, path: Path, adapter: str) -> bool:
    """Undo the folding on a pipeline that loaded `path`: lora_B back to its trained values and
    peft's scale and lora_alpha to the trained ones, so the adapter is the one that was trained.
    Returns False (and changes nothing) for a file without the record."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get(TRAINED_KEY)
    if not raw:
        return False
    from peft.tuners.lora import LoraLayer

    for component, trained in json.loads(raw).items():
        module = getattr(pipe, component)
        with torch.no_grad():
            for name, layer in module.named_modules():
                if isinstance(layer, LoraLayer) and adapter in layer.lora_A and name in trained["scales"]:
                    scale = trained["scales"][name]
                    layer.lora_B[adapter].weight.div_(scale)
                    layer.scaling[adapter] = scale
                    layer.lora_alpha[adapter] = trained["lora_alpha"]
        module.peft_config[adapter].lora_alpha = trained["lora_alpha"]
    return True
