#!/usr/bin/env python3
"""Build a FLUX.1 or FLUX.2 Klein pipeline with random weights, offline.

    python scripts/tiny_flux.py OUT_DIR --family flux|flux2-klein
                                [--arch tiny|flux-dev|flux-schnell|flux2-klein-4b] [--variant base|distilled]
                                [--seed 0]

The real diffusers and transformers classes (``FluxPipeline``: ``FluxTransformer2DModel``,
``AutoencoderKL``, CLIP and T5 encoders; ``Flux2KleinPipeline``: ``Flux2Transformer2DModel``,
``AutoencoderKLFlux2``, a Qwen3 encoder), built from small configs, or with a full-shape
``--arch`` from the published config numbers so compute and memory are the real model's (for
GPU benchmarks only: FLUX.1-dev is ~17B parameters with T5-XXL, written in bf16). The
tokenizers are written here: CLIP's byte-level BPE as for SD, a T5 Unigram model built with
the ``tokenizers`` library, and a byte-level BPE with Qwen's chat tokens and template. The same
seed always gives the same weights. A FLUX.2 klein folder is the Base checkpoint (``--variant
base``, the default: what LoRAs train on) or the step-distilled one (``--variant distilled``);
as published, they differ only in model_index.json's ``is_distilled``.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

try:  # a sibling script when run from scripts/, or loaded by tests through scripts_loader
    from make_tiny_model import write_tokenizer as write_clip_tokenizer
except ImportError:  # pragma: no cover - imported as scripts.tiny_flux
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_tiny_model import write_tokenizer as write_clip_tokenizer

FAMILIES = {"flux": ("tiny", "tiny-schnell", "flux-dev", "flux-schnell"), "flux2-klein": ("tiny", "flux2-klein-4b")}
VARIANTS = {"flux": ("",), "flux2-klein": ("base", "distilled")}  # the first is the default
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
# Qwen3's chat template, reduced to what Flux2KleinPipeline uses (one user turn, thinking off).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


# --- tokenizers ------------------------------------------------------------------------------

def write_t5_tokenizer(out: Path):
    """A T5 tokenizer over a Unigram model of single characters (and word-initial letters)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    t5 = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                         extra_ids=0, model_max_length=512)
    t5.save_pretrained(out)
    return t5


def write_qwen_tokenizer(out: Path):
    """A Qwen2 tokenizer: byte-level BPE over the 256 byte symbols, no merges, Qwen's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2TokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    qwen = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None, model_max_length=512)
    qwen.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    qwen.chat_template = QWEN_CHAT_TEMPLATE
    qwen.save_pretrained(out)
    return qwen


# --- configs ---------------------------------------------------------------------------------

def flux_configs(arch: str, *, t5_vocab: int) -> dict:
    """Transformer, VAE, CLIP, T5 and scheduler configs for a FLUX.1 pipeline."""
    guidance = "schnell" not in arch
    if arch in ("tiny", "tiny-schnell"):
        return dict(
            transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                             pooled_projection_dim=32, axes_dims_rope=[4, 6, 6], guidance_embeds=guidance),
            vae=dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                     norm_num_groups=8, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                     shift_factor=0.0609, scaling_factor=1.5035),
            clip=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                      bos_token_id=512, eos_token_id=513, pad_token_id=513),
            t5=dict(vocab_size=t5_vocab, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, feed_forward_proj="gated-gelu"),
            scheduler=_flux_scheduler(dev=guidance),
        )
    # FLUX.1-dev / -schnell as published (black-forest-labs/FLUX.1-*: transformer, vae, CLIP-L, T5-XXL).
    return dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                         pooled_projection_dim=768, axes_dims_rope=[16, 56, 56], guidance_embeds=guidance),
        vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16,
                 norm_num_groups=32, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
                 shift_factor=0.1159, scaling_factor=0.3611, force_upcast=True),
        clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                  hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1),
        t5=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
                tie_word_embeddings=False),
        scheduler=_flux_scheduler(dev=guidance),
    )


def _flux_scheduler(*, dev: bool) -> dict:
    if dev:  # resolution-dependent shift at inference; training draws sigmas in (0, 1] unshifted
        return dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def klein_configs(arch: str, *, qwen_vocab: int) -> dict:
    """Transformer, VAE, Qwen3 and scheduler configs for a FLUX.2 Klein pipeline."""
    scheduler = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                     max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    if arch == "tiny":
        # 27 Qwen layers: the pipeline stacks hidden states 9, 18 and 27, as for the real model.
        return dict(
            transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                             timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False),
            vae=dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                     norm_num_groups=8, sample_size=32, use_quant_conv=False, use_post_quant_conv=False),
            qwen=dict(vocab_size=qwen_vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=27,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      tie_word_embeddings=True),
            scheduler=scheduler,
        )
    # FLUX.2-klein-4B as published: the Flux.2 transformer (5 double, 20 single blocks), the
    # Flux.2 VAE (its defaults are the published ones) and Qwen3-4B.
    return dict(
        transformer=dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20,
                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=7680,
                         timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=[32, 32, 32, 32],
                         rope_theta=2000, eps=1e-6, guidance_embeds=False),
        vae=dict(),
        qwen=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
        scheduler=scheduler,
    )


# --- builders --------------------------------------------------------------------------------

def build_flux(out_dir: Path, *, arch: str = "tiny", seed: int = 0, variant: str = "") -> Path:
    """Build and save a FluxPipeline; return ``out_dir``. Deterministic for (arch, seed)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    out_dir = Path(out_dir)
    src = out_dir / "_tokenizer_src"
    write_clip_tokenizer(src / "clip")
    t5_tok = write_t5_tokenizer(src / "t5")
    cfg = flux_configs(arch, t5_vocab=len(t5_tok))
    with _weights_dtype(arch):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**cfg["transformer"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg["vae"])
        torch.manual_seed(seed + 2)
        clip = CLIPTextModel(CLIPTextConfig(**cfg["clip"]))
        torch.manual_seed(seed + 3)
        t5 = T5EncoderModel(T5Config(**cfg["t5"]))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                        text_encoder=clip, tokenizer=CLIPTokenizer.from_pretrained(src / "clip"),
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    return _save(pipe, out_dir, src)


def build_flux2_klein(out_dir: Path, *, arch: str = "tiny", seed: int = 0, variant: str = "base") -> Path:
    """Build and save a Flux2KleinPipeline, the Base (undistilled) or the step-distilled
    checkpoint's folder (``is_distilled`` in model_index.json); return ``out_dir``."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    src = out_dir / "_tokenizer_src"
    tok = write_qwen_tokenizer(src / "qwen")
    cfg = klein_configs(arch, qwen_vocab=len(tok))
    with _weights_dtype(arch):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(**cfg["transformer"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLFlux2(**cfg["vae"])
        torch.manual_seed(seed + 2)
        qwen = Qwen3ForCausalLM(Qwen3Config(**cfg["qwen"]))
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                              text_encoder=qwen, tokenizer=tok, transformer=transformer,
                              is_distilled=variant == "distilled")
    return _save(pipe, out_dir, src)


class _weights_dtype:
    """Full-shape models are built in bf16 (as published; fp32 FLUX.1-dev would need ~70 GB)."""

    def __init__(self, arch: str):
        self.full = not arch.startswith("tiny")

    def __enter__(self):
        import torch

        self.old = torch.get_default_dtype()
        if self.full:
            torch.set_default_dtype(torch.bfloat16)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.old)


def _save(pipe, out_dir: Path, src: Path) -> Path:
    import shutil

    pipe.save_pretrained(out_dir)
    shutil.rmtree(src)
    return out_dir


BUILDERS = {"flux": build_flux, "flux2-klein": build_flux2_klein}


def build(out_dir: Path, *, family: str, arch: str = "tiny", seed: int = 0, variant: str | None = None) -> Path:
    if arch not in FAMILIES[family]:
        raise SystemExit(f"--arch {arch}: not a {family} arch; valid: {', '.join(FAMILIES[family])}")
    variant = VARIANTS[family][0] if variant is None else variant
    if variant not in VARIANTS[family]:
        raise SystemExit(f"--variant {variant}: {family} has {', '.join(v or repr(v) for v in VARIANTS[family])}")
    return BUILDERS[family](out_dir, arch=arch, seed=seed, variant=variant)


def main(argv: list[str] | None = None) -> int:
    try:
        import train  # noqa: F401  (quiets third-party import-time noise)
    except ImportError:
        pass
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    p.add_argument("--family", choices=sorted(FAMILIES), required=True, help="model family")
    p.add_argument("--arch", default="tiny", help="tiny (default), or a full shape: "
                   + "; ".join(f"{f}: {', '.join(a[1:])}" for f, a in FAMILIES.items()))
    p.add_argument("--variant", default=None, help="flux2-klein: base (default) or distilled")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    a = p.parse_args(argv)
    out = build(a.out_dir, family=a.family, arch=a.arch, seed=a.seed, variant=a.variant)
    print(f"wrote {a.arch} {a.family} {a.variant or ''} pipeline to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
