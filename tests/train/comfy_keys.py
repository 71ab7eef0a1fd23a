"""ComfyUI's LoRA key rules, written out as an independent test oracle (nothing from train/).

ComfyUI is not on PyPI and nothing may download at test time, so its rules are restated here
from its source (github.com/comfyanonymous/ComfyUI, read at the revision the issue names,
a125cd84, and current master):

- ``comfy/lora.py`` ``load_lora``: a LoRA named ``x`` is ``x.lora_up.weight`` + ``x.lora_down.weight``
  (kohya), ``x_lora.up.weight`` / ``x_lora.down.weight``, ``x.lora_B.weight`` + ``x.lora_A.weight``
  (diffusers/peft), ``x.lora.up.weight`` or ``x.lora_linear_layer.up.weight``; ``x.alpha`` is
  optional. A key no LoRA name claims is logged "lora key not loaded" and dropped.
- ``comfy/lora.py`` ``model_lora_keys_clip``: CLIP layer ``b`` of ``LORA_CLIP_MAP`` is
  ``lora_te_text_model_encoder_layers_{b}_{layer}`` and ``lora_te1_...`` on CLIP-L (``clip_l``),
  ``lora_te2_...`` on SDXL's bigG (``clip_g``, when CLIP-L is present).
- ``comfy/lora.py`` ``model_lora_keys_unet``: every model weight ``diffusion_model.<k>.weight``
  is ``lora_unet_<k with . as _>`` and ``diffusion_model.<k>`` (the generic format); a UNet's
  diffusers names (``comfy/utils.py unet_to_diffusers``) are ``lora_unet_<diffusers name, _>``.
- ``comfy/utils.py`` ``flux_to_diffusers``: which diffusers layer is which rows of which BFL
  weight (``to_q/to_k/to_v`` are rows 0, H, 2H of ``img_attn.qkv`` ...).
- ``comfy/ldm/flux/layers.py``: the BFL weights' shapes (FLUX.1: mlp_ratio 4, GELU MLP;
  FLUX.2: ``mlp_silu_act``, a gated MLP whose first layer is twice as wide).
- Z-Image and Qwen-Image (``comfy/lora.py model_lora_keys_unet``: the ``QwenImage`` and
  ``Lumina2`` branches; ``comfy/utils.py z_image_to_diffusers``): every model weight
  ``diffusion_model.<n>.weight`` is reachable as ``diffusion_model.<n>``; Qwen-Image's ComfyUI
  model uses diffusers' layer names, reachable also as ``<n>`` and ``transformer.<n>``; Z-Image's
  (Lumina2/NextDiT) fuses q, k, v into ``attention.qkv`` and names ``to_out.0`` ``attention.out``,
  and ``diffusion_model.<d>``, ``transformer.<d>`` and ``<d>`` all reach a diffusers name ``<d>``.
- ``comfy/lora.py`` ``calculate_weight``: a "lora" patch adds
  ``strength * (alpha / down.shape[0] if alpha else 1) * up @ down`` to the weight.
"""

from __future__ import annotations

from typing import Any, Mapping

LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}


# --- key maps: LoRA name -> the model weight it patches (a (space, name) pair) ------------------

def clip_key_map(layers: Mapping[str, int]) -> dict[str, tuple[str, str]]:
    """``model_lora_keys_clip`` for CLIP encoders ``{"clip_l": n_layers, "clip_g": n_layers}``;
    targets are ``(encoder, "text_model.encoder.layers.<b>.<layer>")``."""
    key_map: dict[str, tuple[str, str]] = {}
    clip_l_present = False
    for b in range(32):
        for c, lora_c in LORA_CLIP_MAP.items():
            target = f"text_model.encoder.layers.{b}.{c}"
            if b < layers.get("clip_l", 0):
                key_map[f"lora_te_text_model_encoder_layers_{b}_{lora_c}"] = ("clip_l", target)
                key_map[f"lora_te1_text_model_encoder_layers_{b}_{lora_c}"] = ("clip_l", target)
                clip_l_present = True
            if b < layers.get("clip_g", 0):
                prefix = "lora_te2" if clip_l_present else "lora_te"
                key_map[f"{prefix}_text_model_encoder_layers_{b}_{lora_c}"] = ("clip_g", target)
    return key_map


def unet_key_map(weight_names) -> dict[str, tuple[str, str]]:
    """A UNet's diffusers weight names (what ``unet_to_diffusers`` enumerates) as
    ``lora_unet_<name with _>``; targets are ``("unet", <module path>)``."""
    return {"lora_unet_" + n[:-len(".weight")].replace(".", "_"): ("unet", n[:-len(".weight")])
            for n in weight_names if n.endswith(".weight")}


def bfl_key_map(bfl_names) -> dict[str, tuple[str, str]]:
    """``model_lora_keys_unet`` over a Flux model's ``diffusion_model.<bfl>.weight`` keys."""
    out = {}
    for name in bfl_names:
        out["lora_unet_" + name.replace(".", "_")] = ("bfl", name)
        out["diffusion_model." + name] = ("bfl", name)
    return out


# --- the BFL (ComfyUI) Flux model: weight shapes and where diffusers' layers sit ---------------

def bfl_shapes(config: Mapping[str, Any], *, flux2: bool) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear weight of ComfyUI's Flux model for a diffusers transformer config."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    m = int(h * (config.get("mlp_ratio", 3.0) if flux2 else 4.0))
    first = 2 * m if flux2 else m  # FLUX.2's gated MLP: gate and up in one matrix
    shapes = {}
    for i in range(config["num_layers"]):
        for side in ("img", "txt"):
            shapes.update({f"double_blocks.{i}.{side}_attn.qkv": (3 * h, h), f"double_blocks.{i}.{side}_attn.proj": (h, h),
                           f"double_blocks.{i}.{side}_mlp.0": (first, h), f"double_blocks.{i}.{side}_mlp.2": (h, m)})
            if not flux2:
                shapes[f"double_blocks.{i}.{side}_mod.lin"] = (6 * h, h)
    for i in range(config["num_single_layers"]):
        shapes[f"single_blocks.{i}.linear1"] = (3 * h + first, h)
        shapes[f"single_blocks.{i}.linear2"] = (h, h + m)
        if not flux2:
            shapes[f"single_blocks.{i}.modulation.lin"] = (3 * h, h)
    shapes["img_in"] = (h, config["in_channels"])
    shapes["txt_in"] = (h, config["joint_attention_dim"])
    out_channels = config.get("out_channels") or config["in_channels"]
    shapes["final_layer.linear"] = (config.get("patch_size", 1) ** 2 * out_channels, h)
    return shapes


def flux_to_diffusers(config: Mapping[str, Any], *, flux2: bool) -> dict[str, tuple[str, int, int]]:
    """``comfy/utils.py flux_to_diffusers`` for weights: diffusers layer -> (BFL name, first row, rows)."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    out: dict[str, tuple[str, int, int]] = {}
    shapes = bfl_shapes(config, flux2=flux2)

    def whole(diffusers: str, bfl: str) -> None:
        if bfl in shapes:
            out[diffusers] = (bfl, 0, shapes[bfl][0])

    for i in range(config["num_layers"]):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, q in enumerate(("to_q", "to_k", "to_v")):
            out[f"{d}.attn.{q}"] = (f"{b}.img_attn.qkv", j * h, h)
            out[f"{d}.attn.add_{q[3:]}_proj"] = (f"{b}.txt_attn.qkv", j * h, h)
        for diffusers, bfl in (("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                               ("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                               ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                               ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
                               ("ff.linear_in", "img_mlp.0"), ("ff.linear_out", "img_mlp.2"),
                               ("ff_context.linear_in", "txt_mlp.0"), ("ff_context.linear_out", "txt_mlp.2")):
            whole(f"{d}.{diffusers}", f"{b}.{bfl}")
    for i in range(config["num_single_layers"]):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, q in enumerate(("to_q", "to_k", "to_v")):
            out[f"{d}.attn.{q}"] = (f"{b}.linear1", j * h, h)
        out[f"{d}.proj_mlp"] = (f"{b}.linear1", 3 * h, 4 * h)
        for diffusers, bfl in (("proj_out", "linear2"), ("norm.linear", "modulation.lin"),
                               ("attn.to_qkv_mlp_proj", "linear1"), ("attn.to_out", "linear2")):
            whole(f"{d}.{diffusers}", f"{b}.{bfl}")
    whole("x_embedder", "img_in")
    whole("context_embedder", "txt_in")
    whole("proj_out", "final_layer.linear")
    return out


# --- load_lora and the patch it applies -----------------------------------------------------

def load_lora(state: Mapping[str, Any], key_map: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """``comfy/lora.py load_lora``: ({target: (up, down, alpha)}, keys not loaded)."""
    patches, loaded = {}, set()
    forms = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
             (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
             (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"))
    for name, target in key_map.items():
        alpha = None
        if f"{name}.alpha" in state:
            alpha = float(state[f"{name}.alpha"])
            loaded.add(f"{name}.alpha")
        for up, down in forms:
            if name + up in state:
                patches[target] = (state[name + up], state[name + down], alpha)
                loaded.update({name + up, name + down})
                break
    return patches, sorted(set(state) - loaded)


def patch_delta(up, down, alpha):
    """What ``calculate_weight`` adds to the weight for a "lora" patch at strength 1."""
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    return scale * (up.float().flatten(start_dim=1) @ down.float().flatten(start_dim=1))


# --- Z-Image and Qwen-Image: key maps over the transformer, fused weights, patches ---------------

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


def dit_key_map(family: str, transformer: Any) -> dict[str, tuple[str, Any]]:
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


def dit_patches(state: Mapping[str, Any], keys: Mapping[str, tuple[str, Any]]) -> tuple[dict[str, list], set[str]]:
    """``load_lora`` over a DiT key map, each patch as its delta: ({ComfyUI weight: [(slice,
    delta)]}, keys of ``state`` not loaded)."""
    raw, unloaded = load_lora(state, keys)
    patches: dict[str, list] = {}
    for (target, part), (up, down, alpha) in raw.items():
        patches.setdefault(target, []).append((part, patch_delta(up, down, alpha)))
    return patches, set(unloaded)


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
