"""The kohya / ComfyUI copy of every family, read the way ComfyUI reads it.

Each family's file (a random LoRA with alpha != rank on the tiny model, text encoders included
where the family trains them) goes through ComfyUI's own key-map and load rules, restated in
``comfy_keys.py`` from ComfyUI's source (not from this project's writers): every key must be
claimed (ComfyUI drops the others with "lora key not loaded"), every patch must fit its weight,
and the delta ComfyUI adds to each weight must be exactly what diffusers' ``fuse_lora`` adds to
the layers behind it (peft's ``get_delta_weight``), rows of fused BFL weights included.
"""

from __future__ import annotations

import pytest
from comfy_keys import bfl_key_map, bfl_shapes, clip_key_map, flux_to_diffusers, load_lora, patch_delta, unet_key_map
from train_helpers import shared_base

torch = pytest.importorskip("torch")

# Beyond the defaults: FLUX.1's MLPs, modulation and single-block MLP rows, Klein's text stream
# and MLPs, so that every kind of fused BFL weight is exercised.
EXTRA_TARGETS = {
    "flux": ("proj_mlp", "proj_out", "norm1.linear", "norm.linear", "x_embedder", "context_embedder"),
    "flux2-klein": ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "linear_in", "linear_out",
                    "single_transformer_blocks.0.attn.to_out"),
}
TEXT_ENCODERS = {"sd": {"clip_l": "text_encoder"}, "sdxl": {"clip_l": "text_encoder", "clip_g": "text_encoder_2"},
                 "flux": {"clip_l": "text_encoder"}, "flux2-klein": {}}


@pytest.fixture(scope="module")
def bases(base, tiny_sdxl_model, tiny_flow_models):
    """The session's loaded bases (the test detaches its LoRA from each again)."""
    return {"sd": base, "sdxl": shared_base(tiny_sdxl_model), "flux": shared_base(tiny_flow_models["flux"]),
            "flux2-klein": shared_base(tiny_flow_models["flux2-klein"])}


def attach_random_lora(model, family: str):
    """A LoRA (rank 4, alpha 8) with random up matrices on the family's targets and text encoders."""
    from train.config import TrainConfig
    from train.families import family_named
    from train.pipeline import attach_lora

    extra = EXTRA_TARGETS.get(family, ())
    targets = ",".join(family_named(family).denoiser_targets + extra) if extra else ""
    cfg = TrainConfig(rank=4, lora_alpha=8, lora_target_modules=targets, train_text_encoder=family != "flux2-klein")
    torch.manual_seed(0)
    attach_lora(model, cfg)
    with torch.no_grad():
        for module in model.torch_modules().values():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return cfg


def lora_layers(model) -> dict[tuple[str, str], object]:
    """{(component, module path): peft LoRA layer} of every layer carrying the adapter."""
    from peft.tuners.lora import LoraLayer

    return {(component, path): layer for component, module in model.torch_modules().items()
            for path, layer in module.named_modules() if isinstance(layer, LoraLayer) and "default" in layer.lora_A}


def text_encoder_layer(model, component: str, path: str):
    module = getattr(model, component)
    try:
        return path, module.get_submodule(path)
    except AttributeError:  # transformers 5 dropped CLIPTextModel's text_model level
        return path.removeprefix("text_model."), module.get_submodule(path.removeprefix("text_model."))


def key_space(model, family: str):
    """ComfyUI's key map for this model, and how to find the weight behind each target."""
    clip = {name: getattr(model, component).config.num_hidden_layers
            for name, component in TEXT_ENCODERS[family].items()}
    key_map = clip_key_map(clip)
    if family in ("sd", "sdxl"):
        key_map.update(unet_key_map(model.unet.state_dict()))
    else:
        key_map.update(bfl_key_map(bfl_shapes(model.transformer.config, flux2=family == "flux2-klein")))
    return key_map


def expected_delta(model, family: str, target, layers) -> tuple[object, set]:
    """What fuse_lora adds to the weight behind ``target``, and the LoRA layers that make it up."""
    space, name = target
    if space == "unet":
        layer = model.unet.get_submodule(name)
        return layer.get_delta_weight("default").float(), {("unet", name)}
    if space in ("clip_l", "clip_g"):
        component = TEXT_ENCODERS[family][space]
        path, layer = text_encoder_layer(model, component, name)
        return layer.get_delta_weight("default").float(), {(component, path)}
    flux2 = family == "flux2-klein"
    shape = bfl_shapes(model.transformer.config, flux2=flux2)[name]
    present = {path for path, _ in model.transformer.named_modules()}
    delta, rows, used = torch.zeros(shape), 0, set()
    for member, (bfl, first, n) in flux_to_diffusers(model.transformer.config, flux2=flux2).items():
        if bfl != name or member not in present:  # the map knows both FLUX generations' names
            continue
        rows += n
        if ("transformer", member) in layers:
            delta[first:first + n] = layers[("transformer", member)].get_delta_weight("default").float()
            used.add(("transformer", member))
    assert rows == shape[0], f"{name}: ComfyUI's diffusers map covers {rows} of its {shape[0]} rows"
    return delta, used


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux", "flux2-klein"])
def test_every_key_of_the_kohya_copy_loads_in_comfyui_and_patches_what_diffusers_fuses(bases, family, tmp_path):
    from safetensors.torch import load_file

    from train.pipeline import detach_lora

    model = bases[family]
    key_map = key_space(model, family)  # the model's own weights, before any LoRA wraps them
    cfg = attach_random_lora(model, family)
    try:
        layers = lora_layers(model)
        path = model.family.save_kohya(model.pipeline(), tmp_path, "lora_kohya",
                                       train_text_encoder=cfg.train_text_encoder, save_dtype="fp32")
        patches, not_loaded = load_lora(load_file(path), key_map)
        assert not_loaded == [], f"ComfyUI would drop {len(not_loaded)} keys, e.g. {not_loaded[:3]}"
        covered = set()
        for target, (up, down, alpha) in patches.items():
            want, used = expected_delta(model, family, target, layers)
            got = patch_delta(up, down, alpha)
            assert got.shape == want.shape, (target, got.shape, want.shape)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=f"{family} {target}")
            covered |= used
        assert covered == set(layers), f"LoRA layers missing from the file: {sorted(set(layers) - covered)[:3]}"
        if TEXT_ENCODERS[family]:
            assert any(space.startswith("clip") for space, _ in patches), "the text encoder's LoRA must load too"
    finally:
        detach_lora(model)
