"""Build a Z-Image or Qwen-Image pipeline with random weights, offline (through
``scripts/make_tiny_model.py --family z-image|qwen-image [--variant base|turbo] [--arch
z-image-6b|qwen-image-20b]``, the one command that builds every family's tiny model).

The real diffusers and transformers classes (``ZImagePipeline``: ``ZImageTransformer2DModel``,
the FLUX-style ``AutoencoderKL``, a ``Qwen3Model`` text encoder; ``QwenImagePipeline``:
``QwenImageTransformer2DModel``, ``AutoencoderKLQwenImage``, a ``Qwen2_5_VLForConditionalGeneration``
text encoder), built from the small configs of diffusers' own pipeline tests
(``tests/pipelines/z_image``, ``tests/pipelines/qwenimage``), or with a full-shape ``--arch``
from the published config numbers (Tongyi-MAI/Z-Image: 6B transformer + Qwen3-4B;
Qwen/Qwen-Image: 20B transformer + Qwen2.5-VL-7B), written in bf16, for GPU benchmarks only.
The tokenizer is the byte-level Qwen2 tokenizer of ``scripts/tiny_flux.py``.

Z-Image's two published variants share one architecture; ``--variant turbo`` writes the model
card a Hugging Face snapshot of Z-Image-Turbo carries (``README.md``), which is what
``train.families.z_image`` reads to tell them apart. The same seed always gives the same weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # a sibling script when run from scripts/, or loaded by tests through scripts_loader
    from tiny_flux import _save, _weights_dtype, flux_configs, write_qwen_tokenizer
except ImportError:  # pragma: no cover - imported as scripts.tiny_dit
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_flux import _save, _weights_dtype, flux_configs, write_qwen_tokenizer

# A model card as Hugging Face snapshots carry it (README.md): front matter, title, usage example.
MODEL_CARD = ("---\nlicense: apache-2.0\nlibrary_name: diffusers\npipeline_tag: text-to-image\n---\n"
              "<h1 align=\"center\">{title}</h1>\n\nThe Z-Image family: Z-Image, Z-Image-Turbo, Z-Image-Edit.\n\n"
              "```python\npipe = ZImagePipeline.from_pretrained(\"Tongyi-MAI/{title}\", torch_dtype=torch.bfloat16)\n```\n")
MODEL_CARDS = {"base": MODEL_CARD.format(title="Z-Image"), "turbo": MODEL_CARD.format(title="Z-Image-Turbo")}


# --- configs ---------------------------------------------------------------------------------

def z_image_configs(arch: str, *, vocab: int) -> dict:
    """Transformer, VAE, Qwen3 and scheduler configs of a Z-Image pipeline."""
    # Both published variants ship a static shift of 3 (use_dynamic_shifting false).
    scheduler = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    if arch == "tiny":  # diffusers' tests/pipelines/z_image get_dummy_components
        return dict(
            transformer=dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
                             n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                             cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
                             axes_lens=[256, 32, 32]),
            vae=dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                     up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1,
                     latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
                     shift_factor=0.1159),
            text=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=8, vocab_size=vocab, max_position_embeddings=512),
            scheduler=scheduler,
        )
    # Tongyi-MAI/Z-Image(-Turbo): the transformer's defaults are the published numbers, the VAE
    # is FLUX.1's, the text encoder Qwen3-4B.
    return dict(
        transformer=dict(),
        vae={k: v for k, v in flux_configs("flux-dev", t5_vocab=0)["vae"].items()},
        text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
        scheduler=scheduler,
    )


def qwen_image_configs(arch: str, *, vocab: int) -> dict:
    """Transformer, VAE, Qwen2.5-VL and scheduler configs of a Qwen-Image pipeline."""
    # Qwen/Qwen-Image scheduler_config.json: resolution-dependent (dynamic) shift at inference.
    scheduler = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                     base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                     time_shift_type="exponential")
    if arch == "tiny":  # diffusers' tests/pipelines/qwenimage get_dummy_components
        return dict(
            transformer=dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                             num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
                             axes_dims_rope=(8, 4, 4)),
            # Non-trivial latent statistics, so the normalisation is exercised.
            vae=dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                     latents_mean=[0.1, -0.2, 0.05, 0.3], latents_std=[1.5, 0.8, 1.2, 2.0]),
            text=dict(text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=2, vocab_size=vocab, rope_theta=1000000.0,
                                       rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default",
                                                     "type": "default"}),
                      vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2,
                                         out_hidden_size=16),
                      hidden_size=16, vocab_size=vocab),
            scheduler=scheduler,
        )
    # Qwen/Qwen-Image: the transformer's and VAE's defaults are the published numbers; Qwen2.5-VL-7B.
    return dict(
        transformer=dict(),
        vae=dict(),
        text=dict(text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                   num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                   max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                   rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default",
                                                 "type": "default"}, tie_word_embeddings=False),
                  vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                     out_hidden_size=3584),
                  hidden_size=3584, vocab_size=152064, tie_word_embeddings=False),
        scheduler=scheduler,
    )


# --- builders --------------------------------------------------------------------------------

def build_z_image(out_dir: Path, *, arch: str = "tiny", seed: int = 0, variant: str = "base") -> Path:
    """Build and save a ZImagePipeline (``variant``'s model card beside it); return ``out_dir``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    out_dir = Path(out_dir)
    src = out_dir / "_tokenizer_src"
    tok = write_qwen_tokenizer(src / "qwen")
    cfg = z_image_configs(arch, vocab=len(tok))
    with _weights_dtype(arch):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(**cfg["transformer"])
        # The padding tokens are created with torch.empty: give them seeded values (diffusers'
        # tests fix them for the same reason).
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pad in (transformer.x_pad_token, transformer.cap_pad_token):
                pad.copy_(torch.randn(pad.shape, generator=g) * 0.02)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = Qwen3Model(Qwen3Config(**cfg["text"], pad_token_id=tok.pad_token_id,
                                              bos_token_id=None, eos_token_id=tok.eos_token_id))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                          text_encoder=text_encoder, tokenizer=tok, transformer=transformer)
    _save(pipe, out_dir, src)
    (out_dir / "README.md").write_text(MODEL_CARDS[variant])
    return out_dir


def build_qwen_image(out_dir: Path, *, arch: str = "tiny", seed: int = 0, variant: str = "") -> Path:
    """Build and save a QwenImagePipeline; return ``out_dir``."""
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out_dir = Path(out_dir)
    src = out_dir / "_tokenizer_src"
    tok = write_qwen_tokenizer(src / "qwen")
    cfg = qwen_image_configs(arch, vocab=len(tok))
    special = dict(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text = {**cfg["text"], "text_config": {**cfg["text"]["text_config"], **special}}
    with _weights_dtype(arch):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(**cfg["transformer"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLQwenImage(**cfg["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**text, **special)).eval()
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                             text_encoder=text_encoder, tokenizer=tok, transformer=transformer)
    return _save(pipe, out_dir, src)


BUILDERS = {"z-image": build_z_image, "qwen-image": build_qwen_image}


def build(out_dir: Path, *, family: str, arch: str = "tiny", seed: int = 0, variant: str | None = None) -> Path:
    """Called by make_tiny_model.build_pipeline, which has checked ``arch`` and ``variant``
    (``None``: the family's first variant, its builder's default)."""
    extra = {"variant": variant} if variant is not None else {}
    return BUILDERS[family](out_dir, arch=arch, seed=seed, **extra)
