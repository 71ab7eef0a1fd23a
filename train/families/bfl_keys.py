"""LoRA files in Black Forest Labs' own layer names: what ComfyUI, Forge and kohya read for Flux.

diffusers splits layers that BFL's checkpoints fuse (a double block's ``img_attn.qkv`` is
diffusers' ``to_q``/``to_k``/``to_v``; a FLUX.1 single block's ``linear1`` is q, k, v and
``proj_mlp``). A fused layer's LoRA is written exactly: its down matrix stacks the members'
down matrices, its up matrix puts each member's (scaled) up matrix in its own rows and
columns, zeros elsewhere (members without a LoRA get zero blocks of the same rank). That is
the block-sparse layout diffusers' own converters recognise and split back into the members'
LoRAs (``_convert_kohya_flux_lora_to_diffusers`` for FLUX.1's kohya copy,
``_convert_non_diffusers_flux2_lora_to_diffusers`` for Klein's ComfyUI copy), and ComfyUI
applies as one ``up @ down`` product. The LoRA scale (alpha / rank) is folded into the up
matrices of the transformer, so a reader that ignores alpha gets the same result.

Z-Image and Qwen-Image need no fusing: ComfyUI reads their LoRAs by diffusers' layer names
under ``diffusion_model.`` (``comfy_diffusers_names_state``).
"""

from __future__ import annotations

from typing import Any, Iterator

from train.errors import TrainError

# (BFL name in a double block, diffusers members in a transformer block)
FLUX_DOUBLE = (("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")), ("img_attn.proj", ("attn.to_out.0",)),
               ("img_mlp.0", ("ff.net.0.proj",)), ("img_mlp.2", ("ff.net.2",)), ("img_mod.lin", ("norm1.linear",)),
               ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
               ("txt_attn.proj", ("attn.to_add_out",)), ("txt_mlp.0", ("ff_context.net.0.proj",)),
               ("txt_mlp.2", ("ff_context.net.2",)), ("txt_mod.lin", ("norm1_context.linear",)))
FLUX_SINGLE = (("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")), ("linear2", ("proj_out",)),
               ("modulation.lin", ("norm.linear",)))
FLUX_GLOBAL = (("img_in", "x_embedder"), ("txt_in", "context_embedder"),
               ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
               ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
               ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
               ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
               ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
               ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
               ("final_layer.linear", "proj_out"))

KLEIN_DOUBLE = (("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")), ("img_attn.proj", ("attn.to_out.0",)),
                ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
                ("txt_attn.proj", ("attn.to_add_out",)), ("img_mlp.0", ("ff.linear_in",)),
                ("img_mlp.2", ("ff.linear_out",)), ("txt_mlp.0", ("ff_context.linear_in",)),
                ("txt_mlp.2", ("ff_context.linear_out",)))
KLEIN_SINGLE = (("linear1", ("attn.to_qkv_mlp_proj",)), ("linear2", ("attn.to_out",)))
KLEIN_GLOBAL = (("img_in", "x_embedder"), ("txt_in", "context_embedder"),
                ("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
                ("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"),
                ("guidance_in.in_layer", "time_guidance_embed.guidance_embedder.linear_1"),
                ("guidance_in.out_layer", "time_guidance_embed.guidance_embedder.linear_2"),
                ("final_layer.linear", "proj_out"),
                ("single_stream_modulation.lin", "single_stream_modulation.linear"),
                ("double_stream_modulation_img.lin", "double_stream_modulation_img.linear"),
                ("double_stream_modulation_txt.lin", "double_stream_modulation_txt.linear"))

LAYOUTS = {"flux": (FLUX_DOUBLE, FLUX_SINGLE, FLUX_GLOBAL), "flux2-klein": (KLEIN_DOUBLE, KLEIN_SINGLE, KLEIN_GLOBAL)}


def lora_layers(module: Any, adapter: str = "default") -> dict[str, tuple[Any, Any, float]]:
    """{module path: (down A (r, in), up B (out, r), scale)} of every LoRA layer of ``module``."""
    from peft.tuners.lora import LoraLayer

    return {name: (layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach(),
                   float(layer.scaling[adapter]))
            for name, layer in module.named_modules()
            if isinstance(layer, LoraLayer) and adapter in layer.lora_A}


def bfl_lora(transformer: Any, layout: str, adapter: str = "default") -> dict[str, tuple[Any, Any]]:
    """{BFL layer name: (down, up with the scale folded in)} for the transformer's LoRA."""
    layers = lora_layers(transformer, adapter)
    out, used = {}, set()
    for bfl, members in _groups(transformer, layout):
        present = [m for m in members if m in layers]
        if not present:
            continue
        used.update(present)
        out[bfl] = _fuse(transformer, members, layers)
    missing = sorted(set(layers) - used)
    if missing:
        raise TrainError(f"{layout}: no BFL (ComfyUI/kohya) name for the LoRA layer(s) {', '.join(missing[:5])}; "
                         "train on the default lora_target_modules or export only the diffusers 'lora' format")
    return out


def _groups(transformer: Any, layout: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    double, single, global_ = LAYOUTS[layout]
    for i in range(len(transformer.transformer_blocks)):
        for bfl, members in double:
            yield f"double_blocks.{i}.{bfl}", tuple(f"transformer_blocks.{i}.{m}" for m in members)
    for i in range(len(transformer.single_transformer_blocks)):
        for bfl, members in single:
            yield f"single_blocks.{i}.{bfl}", tuple(f"single_transformer_blocks.{i}.{m}" for m in members)
    for bfl, member in global_:
        yield bfl, (member,)


def _fuse(transformer: Any, members: tuple[str, ...], layers: dict) -> tuple[Any, Any]:
    import torch

    rank = max(layers[m][0].shape[0] for m in members if m in layers)
    outs = [_out_features(transformer, m) for m in members]
    a0 = next(layers[m][0] for m in members if m in layers)
    down = torch.zeros(rank * len(members), a0.shape[1], dtype=torch.float32)
    up = torch.zeros(sum(outs), rank * len(members), dtype=torch.float32)
    row = 0
    for j, (m, n_out) in enumerate(zip(members, outs)):
        if m in layers:
            a, b, scale = layers[m]
            r = a.shape[0]
            down[j * rank:j * rank + r] = a.float().cpu()
            up[row:row + n_out, j * rank:j * rank + r] = b.float().cpu() * scale
        row += n_out
    return down, up


def _out_features(transformer: Any, name: str) -> int:
    layer = transformer.get_submodule(name)
    return getattr(layer, "base_layer", layer).out_features


def kohya_flux_state(transformer: Any, text_encoder: Any | None = None, adapter: str = "default") -> dict[str, Any]:
    """FLUX.1's kohya (sd-scripts) file: ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``,
    ``...lora_up.weight`` and ``.alpha`` (= rank: the scale is in the up matrix); CLIP's as
    ``lora_te1_text_model_encoder_layers_<n>_<layer>`` with its own alpha."""
    import torch

    state = {}
    for bfl, (down, up) in bfl_lora(transformer, "flux", adapter).items():
        key = "lora_unet_" + bfl.replace(".", "_")
        state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(float(down.shape[0]))})
    if text_encoder is not None:
        for name, (a, b, scale) in lora_layers(text_encoder, adapter).items():
            # ComfyUI's and Forge's CLIP-L map reads lora_te1_text_model_encoder_layers_<n>_...; with
            # transformers 5 CLIPTextModel's paths lost the text_model level, so it is put back.
            path = name if name.startswith("text_model.") else "text_model." + name
            key = "lora_te1_" + path.replace(".", "_")
            state.update({f"{key}.lora_down.weight": a.float().cpu(), f"{key}.lora_up.weight": b.float().cpu(),
                          f"{key}.alpha": torch.tensor(scale * a.shape[0])})
    return state


def comfy_klein_state(transformer: Any, adapter: str = "default") -> dict[str, Any]:
    """Klein's ComfyUI file: ``diffusion_model.<BFL name>.lora_A.weight`` / ``.lora_B.weight``,
    no alpha keys (the scale is in lora_B), the layout ComfyUI and ai-toolkit write for Flux.2."""
    state = {}
    for bfl, (down, up) in bfl_lora(transformer, "flux2-klein", adapter).items():
        state.update({f"diffusion_model.{bfl}.lora_A.weight": down, f"diffusion_model.{bfl}.lora_B.weight": up})
    return state


def comfy_diffusers_names_state(transformer: Any, adapter: str = "default",
                                prefix: str = "diffusion_model.") -> dict[str, Any]:
    """The ComfyUI file of families whose ComfyUI model reads diffusers' own layer names
    (Qwen-Image's state dict uses them; Z-Image's LoRA key map translates them, to_q/k/v into
    its fused qkv): ``diffusion_model.<diffusers path>.lora_A.weight`` / ``.lora_B.weight``, no
    alpha keys (the scale is in lora_B), as ai-toolkit writes them for these models."""
    state = {}
    for name, (down, up, scale) in lora_layers(transformer, adapter).items():
        state.update({f"{prefix}{name}.lora_A.weight": down.float().cpu(),
                      f"{prefix}{name}.lora_B.weight": up.float().cpu() * scale})
    return state
