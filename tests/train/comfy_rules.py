"""ComfyUI's LoRA loading rules for Z-Image and Qwen-Image, restated so a test can load a file the
way ComfyUI does (ComfyUI has no PyPI package and nothing may download at test time).

Restated from ComfyUI (comfy/lora.py ``model_lora_keys_unet``: the ``QwenImage`` and ``Lumina2``
branches; comfy/utils.py ``z_image_to_diffusers``; comfy/weight_adapter/lora.py
``LoRAAdapter.load``):

- The key map sends LoRA module names to ComfyUI model weights, optionally a slice
  ``(dim, offset, size)`` of a fused weight. Every model weight ``diffusion_model.<n>.weight`` is
  reachable as ``diffusion_model.<n>`` (the generic format). Qwen-Image's ComfyUI model uses
  diffusers' layer names, reachable also as ``<n>`` and ``transformer.<n>``. Z-Image's ComfyUI
  model (Lumina2/NextDiT) fuses q, k, v into ``attention.qkv`` and names ``to_out.0``
  ``attention.out``; ``z_image_to_diffusers`` maps each diffusers name ``<d>.weight`` to it, and
  ``diffusion_model.<d>``, ``transformer.<d>`` and ``<d>`` all reach it.
- A module ``x`` loads from ``x.lora_up.weight``/``x.lora_down.weight`` or
  ``x.lora_B.weight``/``x.lora_A.weight``, scaled by ``x.alpha / rank`` when ``x.alpha`` is there
  (else 1); the patch ``up @ down`` is added to the weight (or its slice). Keys no module
  consumed are reported ("lora key not loaded").
"""

from __future__ import annotations

from typing import Any


def z_image_to_diffusers(n_layers: int, dim: int, n_refiner: int, prefix: str = "diffusion_model.") -> dict:
    """diffusers weight name -> (ComfyUI weight name, slice or None), as comfy/utils.py builds it."""
    out: dict[str, tuple[str, Any]] = {}

    def block(src: str, dst: str, adaln: bool) -> None:
        for end in ("weight", "bias"):
            qkv = f"{dst}.attention.qkv.{end}"
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                out[f"{src}.attention.{name}.{end}"] = (qkv, (0, i * dim, dim))
        names = {"attention.norm_q.weight": "attention.q_norm.weight", "attention.norm_k.weight":
                 "attention.k_norm.weight", "attention.to_out.0.weight": "attention.out.weight",
                 "attention.to_out.0.bias": "attention.out.bias"}
        names.update({n: n for n in ("attention_norm1.weight", "attention_norm2.weight", "feed_forward.w1.weight",
                                     "feed_forward.w2.weight", "feed_forward.w3.weight", "ffn_norm1.weight",
                                     "ffn_norm2.weight")})
        if adaln:
            names.update({n: n for n in ("adaLN_modulation.0.weight", "adaLN_modulation.0.bias")})
        out.update({f"{src}.{k}": (f"{dst}.{v}", None) for k, v in names.items()})

    for i in range(n_layers):
        block(f"layers.{i}", f"{prefix}layers.{i}", True)
    for i in range(n_refiner):
        block(f"context_refiner.{i}", f"{prefix}context_refiner.{i}", True)
        block(f"noise_refiner.{i}", f"{prefix}noise_refiner.{i}", True)
    return out


def key_map(family: str, transformer: Any) -> dict[str, tuple[str, Any]]:
    """LoRA module name -> (ComfyUI weight, slice or None) for ``transformer``'s model."""
    keys: dict[str, tuple[str, Any]] = {}
    if family == "qwen-image":
        for name, _ in transformer.named_parameters():
            if name.endswith(".weight"):
                n = name[:-len(".weight")]
                target = (f"diffusion_model.{name}", None)
                keys.update({f"diffusion_model.{n}": target, n: target, f"transformer.{n}": target})
        return keys
    c = transformer.config
    for d, target in z_image_to_diffusers(c.n_layers, c.dim, c.n_refiner_layers).items():
        if d.endswith(".weight"):
            n = d[:-len(".weight")]
            keys.update({f"diffusion_model.{n}": target, f"transformer.{n}": target, n: target})
    return keys


def load_lora(state: dict, keys: dict) -> tuple[dict[str, list], set[str]]:
    """({ComfyUI weight: [(slice, patch)]}, keys of ``state`` not loaded), as ComfyUI's loader."""
    patches: dict[str, list] = {}
    used: set[str] = set()
    for x, (target, part) in keys.items():
        for up, down in ((f"{x}.lora_up.weight", f"{x}.lora_down.weight"), (f"{x}.lora_B.weight", f"{x}.lora_A.weight")):
            if up in state:
                alpha = state.get(f"{x}.alpha")
                scale = 1.0 if alpha is None else float(alpha) / state[down].shape[0]
                patches.setdefault(target, []).append((part, scale * (state[up].float() @ state[down].float())))
                used.update({up, down} | ({f"{x}.alpha"} if alpha is not None else set()))
    return patches, set(state) - used


def comfy_weights(family: str, transformer: Any, diffusers_state: dict) -> dict[str, Any]:
    """The ComfyUI model's weights built from diffusers weights (q, k, v fused for Z-Image)."""
    import torch

    if family == "qwen-image":
        return {f"diffusion_model.{k}": v.float() for k, v in diffusers_state.items()}
    c = transformer.config
    out: dict[str, Any] = {}
    for d, (target, part) in z_image_to_diffusers(c.n_layers, c.dim, c.n_refiner_layers).items():
        if d not in diffusers_state:
            continue
        w = diffusers_state[d].float()
        if part is None:
            out[target] = w.clone()
        else:
            full = out.setdefault(target, torch.zeros((3 * part[2],) + tuple(w.shape[1:])))
            full.narrow(part[0], part[1], part[2]).copy_(w)
    return out


def apply(weights: dict, patches: dict) -> dict:
    """``weights`` with the patches added (only the patched entries are returned)."""
    out = {}
    for target, items in patches.items():
        w = weights[target].clone()
        for part, delta in items:
            (w if part is None else w.narrow(part[0], part[1], part[2])).add_(delta.reshape(
                w.shape if part is None else w.narrow(part[0], part[1], part[2]).shape))
        out[target] = w
    return out
