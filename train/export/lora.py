"""The LoRA itself: diffusers `pytorch_lora_weights.safetensors` and the kohya copy.

Both are read from the adapter attached in memory (peft `LoraConfig` + `add_adapter`). The
per-module scale `alpha / r` lives in the peft config, not in the weights, so each format
carries it explicitly: diffusers through its adapter metadata (without it, a reload assumes
alpha == r), kohya through one `.alpha` tensor per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import portable
from .errors import ExportError

ADAPTER = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class LoraParts:
    """peft-format state dicts (keys `<module>.lora_A.weight`) and configs of the trained parts."""

    unet: dict[str, torch.Tensor]
    unet_config: dict
    text_encoder: dict[str, torch.Tensor] | None
    text_encoder_config: dict | None
    # peft's per-layer scale, folded into lora_B on save (see portable.py), and the text
    # encoder's class (its key layout).
    unet_scales: dict[str, float] | None = None
    text_encoder_scales: dict[str, float] | None = None
    text_encoder_class: str | None = None


def has_adapter(module, adapter: str = ADAPTER) -> bool:
    return adapter in (getattr(module, "peft_config", None) or {})


def lora_parts(pipe, *, train_text_encoder: bool, rank: int, lora_alpha: float) -> LoraParts:
    """The trained adapter's weights, checked against the rank/alpha the task was trained with."""
    from peft.utils import get_peft_model_state_dict

    if not has_adapter(pipe.unet):
        raise ExportError(f"the UNet has no LoRA adapter {ADAPTER!r} attached: nothing to export")
    if train_text_encoder and not has_adapter(pipe.text_encoder):
        raise ExportError("train_text_encoder is set but the text encoder has no LoRA adapter attached")
    parts = {}
    for name in ("unet", "text_encoder"):
        module = getattr(pipe, name)
        if name == "text_encoder" and not train_text_encoder:
            parts[name], parts[name + "_config"] = None, None
            continue
        config = module.peft_config[ADAPTER]
        # The UNet's adapter must match what the task reports (the manifest records it); the text
        # encoder's may differ, its own config travels with it.
        if name == "unet" and (config.r != rank or float(config.lora_alpha) != float(lora_alpha)):
            raise ExportError(
                f"{name} adapter has r={config.r}, lora_alpha={config.lora_alpha} but the task says "
                f"rank={rank}, lora_alpha={lora_alpha}: the export would record the wrong scale")
        state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
        parts[name] = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        parts[name + "_config"] = config.to_dict()
        parts[name + "_scales"] = portable.module_scales(module, ADAPTER)
    parts["text_encoder_class"] = type(pipe.text_encoder).__name__ if train_text_encoder else None
    return LoraParts(**parts)


def save_diffusers_lora(parts: LoraParts, model_dir: Path, save_dtype: str) -> Path:
    """`model_dir/pytorch_lora_weights.safetensors`, loadable with `pipe.load_lora_weights(model_dir)`
    by diffusers 0.32 through 0.42 (portable.py: scales folded, CLIP keys, portable metadata)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    dtype = DTYPES[save_dtype]
    cast = lambda sd: {k: v.to(dtype).contiguous() for k, v in sd.items()}  # noqa: E731
    unet, te = _folded(parts.unet, parts.unet_scales), _folded(parts.text_encoder, parts.text_encoder_scales)
    if te:
        te = portable.legacy_text_encoder_keys(convert_state_dict_to_diffusers(te), parts.text_encoder_class)
    StableDiffusionPipeline.save_lora_weights(
        model_dir,
        unet_lora_layers=cast(convert_state_dict_to_diffusers(unet)),
        text_encoder_lora_layers=cast(te) if te else None,
        unet_lora_adapter_metadata=_metadata(parts.unet_config, parts.unet_scales),
        text_encoder_lora_adapter_metadata=_metadata(parts.text_encoder_config, parts.text_encoder_scales) if te else None,
    )
    path = Path(model_dir) / LORA_WEIGHT_NAME
    trained = {name: {"lora_alpha": getattr(parts, f"{name}_config")["lora_alpha"], "scales": scales}
               for name in ("unet", "text_encoder") if (scales := getattr(parts, f"{name}_scales"))}
    portable.record_trained(path, trained)  # so `python -m train.export --lora` can report the trained alpha
    return path


def kohya_state_dict(pipe, *, train_text_encoder: bool, save_dtype: str,
                     modules: list | None = None) -> dict[str, torch.Tensor]:
    """`lora_unet_<module_path_with_underscores>.lora_down.weight / .lora_up.weight / .alpha`, and
    `lora_te_...` for the text encoder (SD1.x naming, read by A1111, ComfyUI and diffusers).
    ``modules`` = [(prefix, module)] of another family (SDXL: lora_unet, lora_te1, lora_te2).

    Built module by module from the live peft layers rather than with diffusers'
    `convert_state_dict_to_kohya`: that helper writes alpha = rank (wrong when lora_alpha != r)
    and mislabels keys when the UNet and text-encoder parts are mixed in one dict.
    """
    dtype = DTYPES[save_dtype]
    out: dict[str, torch.Tensor] = {}
    if modules is None:
        modules = [("lora_unet", pipe.unet)] + ([("lora_te", pipe.text_encoder)] if train_text_encoder else [])
    for prefix, root in modules:
        for path, layer in _lora_layers(root):
            if prefix.startswith("lora_te") and not path.startswith("text_model."):
                # transformers 5 dropped CLIPTextModel's `text_model` wrapper; A1111 and ComfyUI
                # still expect the original module names (lora_te_text_model_encoder_layers_0_...).
                path = "text_model." + path
            key = f"{prefix}_{path.replace('.', '_')}"
            down = layer.lora_A[ADAPTER].weight.detach()
            up = layer.lora_B[ADAPTER].weight.detach()
            r = layer.r[ADAPTER]
            # kohya applies up @ down * alpha / r; peft applies up @ down * scaling[adapter].
            # alpha = scaling * r keeps the product right also for rank/alpha patterns and rsLoRA.
            alpha = float(layer.scaling[ADAPTER]) * r
            out[f"{key}.lora_down.weight"] = down.to("cpu", dtype, copy=True).contiguous()
            out[f"{key}.lora_up.weight"] = up.to("cpu", dtype, copy=True).contiguous()
            out[f"{key}.alpha"] = torch.tensor(alpha, dtype=dtype)
    if not out:
        raise ExportError("no LoRA layers found on the UNet: nothing to export")
    return out


def save_kohya(pipe, model_dir: Path, name: str, *, train_text_encoder: bool, save_dtype: str,
               modules: list | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(model_dir) / f"{name}.safetensors"
    state = kohya_state_dict(pipe, train_text_encoder=train_text_encoder, save_dtype=save_dtype, modules=modules)
    save_file(state, str(path), metadata={"format": "pt", "ss_network_module": "networks.lora"})
    return path


def _lora_layers(root):
    """(module path, peft LoraLayer) for every layer carrying the adapter, in module order."""
    from peft.tuners.lora import LoraLayer

    for path, module in root.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            yield path, module


def _folded(state, scales):
    return portable.fold_scales(state, scales) if state and scales is not None else state


def _metadata(config: dict | None, scales) -> dict | None:
    return None if config is None else portable.portable_metadata(config, folded=scales is not None)


def _json_safe(config: dict | None) -> dict | None:
    """peft config dicts hold sets (target_modules) which json cannot write."""
    if config is None:
        return None
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
