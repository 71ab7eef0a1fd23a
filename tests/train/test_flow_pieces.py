"""The flow-matching objective, the quantized base layers and the BFL key maps, as plain values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")


def table():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from train.flow import SigmaTable

    return SigmaTable.from_scheduler_config(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config)


def test_sigmas_are_the_reference_scripts_draws_and_repeat_for_a_seed():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from train.flow import sample_sigmas

    t = table()
    a = sample_sigmas(t, 8, torch.Generator().manual_seed(1), scheme="logit_normal")
    b = sample_sigmas(t, 8, torch.Generator().manual_seed(1), scheme="logit_normal")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # As train_dreambooth_lora_flux.py: u -> index -> the scheduler's timestep and its sigma.
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    u = compute_density_for_timestep_sampling("logit_normal", 8, 0.0, 1.0, 1.29, generator=torch.Generator().manual_seed(1))
    idx = (u * 1000).long()
    assert torch.equal(a[1], ref.timesteps[idx]) and torch.allclose(a[0], ref.sigmas[idx])
    assert torch.allclose(a[1], 1000 * a[0])


def test_logit_normal_concentrates_sigmas_in_the_middle_and_none_is_uniform():
    from train.flow import sample_sigmas

    t = table()
    mid = lambda s: float(((s > 0.25) & (s < 0.75)).float().mean())  # noqa: E731
    uniform, _ = sample_sigmas(t, 4000, torch.Generator().manual_seed(0), scheme="none")
    logit, _ = sample_sigmas(t, 4000, torch.Generator().manual_seed(0), scheme="logit_normal")
    assert abs(mid(uniform) - 0.5) < 0.03 and mid(logit) > 0.6
    assert float(uniform.min()) > 0 and float(uniform.max()) <= 1


def test_noisy_input_target_and_weights():
    from train.flow import flow_loss, loss_weights, noisy_input, velocity_target

    x, noise = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), -1.0)
    sigmas = torch.tensor([0.0, 1.0])
    z = noisy_input(x, noise, sigmas)
    assert torch.equal(z[0], x[0]) and torch.equal(z[1], noise[1])  # sigma 0: data, sigma 1: noise
    assert torch.equal(velocity_target(x, noise), noise - x)
    assert torch.equal(loss_weights("none", torch.tensor([0.2, 0.5])), torch.ones(2))
    assert torch.allclose(loss_weights("sigma_sqrt", torch.tensor([0.5])), torch.tensor([4.0]))
    w = loss_weights("cosmap", torch.tensor([0.5]))
    assert math.isclose(float(w), 2 / (math.pi * 0.5), rel_tol=1e-6)
    pred = torch.zeros(4, 1, 2, 2)
    target = torch.cat([torch.ones(2, 1, 2, 2), 2 * torch.ones(2, 1, 2, 2)])
    loss, inst, prior = flow_loss(pred, target, torch.ones(4), n_instance=2, prior_loss_weight=0.5)
    assert float(inst) == 1.0 and float(prior) == 4.0 and float(loss) == 3.0


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_linears_compute_close_to_the_originals_and_train_a_lora_on_top(kind):
    import bitsandbytes as bnb
    from peft import LoraConfig, inject_adapter_in_model

    from train.quantize import quantize_linears

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    x = torch.randn(8, 64)
    want = model(x).detach()
    assert quantize_linears(model, kind, device="cpu", compute_dtype=torch.float32) == 2
    assert isinstance(model[0], bnb.nn.Linear4bit if kind == "nf4" else bnb.nn.Linear8bitLt)
    assert float((model(x) - want).norm() / want.norm()) < 0.15
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["0", "2"]), model)
    model(x).pow(2).mean().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)


def test_fused_bfl_layers_hold_exactly_the_members_lora():
    """A FLUX.1 single block's linear1 = [q; k; v; mlp]: its LoRA delta is the members' deltas stacked."""
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    from train.families.bfl_keys import bfl_lora, lora_layers

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=[4, 6, 6])
    tr.add_adapter(LoraConfig(r=2, lora_alpha=6, target_modules=["attn.to_q", "attn.to_k", "attn.to_v", "proj_out"]))
    for n, p in tr.named_parameters():
        if "lora_B" in n:
            p.data.normal_()
    layers = lora_layers(tr)
    fused = bfl_lora(tr, "flux")
    down, up = fused["single_blocks.0.linear1"]
    members = [f"single_transformer_blocks.0.attn.to_{m}" for m in "qkv"]
    want = torch.cat([layers[m][1] @ layers[m][0] * layers[m][2] for m in members] + [torch.zeros(128, 32)])
    assert torch.allclose(up @ down, want, atol=1e-6)
    down, up = fused["double_blocks.0.img_attn.qkv"]
    members = [f"transformer_blocks.0.attn.to_{m}" for m in "qkv"]
    assert torch.allclose(up @ down, torch.cat([layers[m][1] @ layers[m][0] * 3.0 for m in members]), atol=1e-6)


def test_full_size_flux_single_block_kohya_copy_is_split_back_exactly_by_diffusers_converter():
    """FLUX.1-dev's single block (3072 wide, 12288 MLP), through FluxPipeline.lora_state_dict
    (diffusers' _convert_kohya_flux_lora_to_diffusers), without building the 12B model."""
    from types import SimpleNamespace

    from diffusers import FluxPipeline

    from train.families.bfl_keys import _fuse

    torch.manual_seed(0)
    dims = {"attn.to_q": 3072, "attn.to_k": 3072, "attn.to_v": 3072, "proj_mlp": 12288}
    members = tuple(f"single_transformer_blocks.0.{m}" for m in dims)
    outs = {f"single_transformer_blocks.0.{m}": n for m, n in dims.items()}
    transformer = SimpleNamespace(get_submodule=lambda name: SimpleNamespace(out_features=outs[name]))
    layers = {m: (torch.randn(4, 3072), torch.randn(outs[m], 4), 2.0) for m in members[:3]}  # q, k, v trained
    down, up = _fuse(transformer, members, layers)
    kohya = {"lora_unet_single_blocks_0_linear1.lora_down.weight": down,
             "lora_unet_single_blocks_0_linear1.lora_up.weight": up,
             "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(float(down.shape[0]))}
    converted = FluxPipeline.lora_state_dict(kohya)
    for m in members:
        a = converted[f"transformer.{m}.lora_A.weight"]
        b = converted[f"transformer.{m}.lora_B.weight"]
        want = layers[m][1] @ layers[m][0] * 2.0 if m in layers else torch.zeros(outs[m], 3072)
        assert torch.allclose(b @ a, want, atol=1e-4), m
