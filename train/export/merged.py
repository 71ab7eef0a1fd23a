"""Merged pipelines: the LoRA fused into the base weights, saved as a diffusers pipeline folder.

The warm worker reuses the in-memory base modules for its next task, so nothing here may
change them: the fused weights are computed into new tensors (`W + scaling * B @ A`, through
peft's `get_delta_weight`, which only reads), and the saved modules are built on the meta
device around those tensors, so no second full-precision copy of the model is made.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from . import portable
from .errors import ExportError
from .lora import ADAPTER, has_adapter

def rewritten(pipe) -> tuple[str, ...]:
    """The components of ``pipe`` with weights (denoiser, text encoders, VAE) are rewritten;
    every other file of the base folder (model_index.json, tokenizers, scheduler, safety
    checker if any) is copied as it is."""
    return tuple(name for name, module in pipe.components.items() if isinstance(module, torch.nn.Module))


def fused_state_dict(module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`module`'s plain (adapter-free) state dict with the adapter fused in, cast to `dtype`, on CPU.

    Keys are the ones a fresh module of the same class has: peft's `base_layer.` level and the
    `lora_*` tensors are dropped. Works for a module without an adapter too (just a cast copy).
    """
    deltas = {}
    if has_adapter(module):
        from peft.tuners.lora import LoraLayer

        for path, layer in module.named_modules():
            if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A:
                # get_delta_weight returns a new tensor (scaling included) and leaves the layer alone.
                deltas[f"{path}.weight"] = layer.get_delta_weight(ADAPTER)
    out = {}
    for key, value in module.state_dict().items():
        if ".lora_" in key or "lora_magnitude_vector" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        value = value.detach()
        if plain in deltas:
            value = value.float() + deltas.pop(plain).float()
        out[plain] = value.to("cpu", dtype, copy=True).contiguous()
    if deltas:
        raise ExportError(f"fused weights without a matching base weight: {sorted(deltas)[:3]}")
    return out


def module_from_state_dict(template, state: dict[str, torch.Tensor]):
    """A new module of `template`'s class and config whose tensors ARE `state` (no copy)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        if hasattr(type(template), "from_config"):  # diffusers ModelMixin
            module = type(template).from_config(template.config)
        else:  # transformers PreTrainedModel
            module = type(template)(template.config)
    module.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (CLIP's position_ids) are not in a state dict: take the template's.
    source_buffers = {k.replace(".base_layer.", "."): v for k, v in template.named_buffers()}
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            owner_path, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            owner.register_buffer(leaf, source_buffers[name].detach().to("cpu", copy=True), persistent=False)
    return module.eval()


def write_merged_pipeline(pipe, base_model_dir: Path, out_dir: Path, dtype: torch.dtype) -> Path:
    """`out_dir/` = base folder with UNet (and text encoder when it has an adapter) fused, all
    weights in `dtype`. Loadable with `<pipeline class>.from_pretrained(out_dir)`."""
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    names = rewritten(pipe)
    shutil.copytree(base_model_dir, out_dir, ignore=_skip_rewritten(base_model_dir, names))
    for name in names:
        template = getattr(pipe, name)
        module = module_from_state_dict(template, fused_state_dict(template, dtype))
        module.save_pretrained(out_dir / name, safe_serialization=True)
        if name == "text_encoder":  # transformers-4 readers need the `text_model.` key level
            portable.write_legacy_text_encoder(out_dir / name, type(template).__name__)
        _keep_base_config(base_model_dir / name, out_dir / name)
        del module
    return out_dir


def _skip_rewritten(base_model_dir: Path, rewritten_names: tuple[str, ...]):
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory) == base_model_dir and n in rewritten_names]
    return ignore


def _keep_base_config(base_component: Path, out_component: Path) -> None:
    """Keep the base's config.json. transformers would record the saved dtype (float16) there and
    then load the text encoder in fp16 by default while diffusers loads UNet and VAE in fp32: a
    plain `from_pretrained(folder)` would then fail on mixed dtypes."""
    if (base_component / "config.json").is_file():
        shutil.copyfile(base_component / "config.json", out_component / "config.json")
