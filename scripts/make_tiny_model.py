#!/usr/bin/env python3
"""Build a diffusers pipeline with random weights, offline: SD 1.x or SDXL, tiny or full shape.

    python scripts/make_tiny_model.py OUT_DIR [--family sd|sdxl|flux|flux2-klein|z-image|qwen-image]
                                              [--arch tiny|sd15|sdxl|flux-dev|flux2-klein-4b|z-image-6b|qwen-image-20b]
                                              [--variant base|distilled|turbo] [--prediction-type epsilon|v_prediction]
                                              [--seed 0]

Nothing is downloaded: the denoiser, VAE and CLIP text encoder(s) are built from small configs
(or, with ``--arch sd15`` / ``--arch sdxl``, from the published SD 1.5 / SDXL base config
numbers, so compute and memory are the real model's), and the CLIP tokenizers are written from
a byte-level vocabulary. The folder is saved with ``save_pretrained`` and loads with
``DiffusionPipeline.from_pretrained(OUT_DIR)``. The same seed always gives the same weights.

Families are a dispatch table (``BUILDERS``: family -> builder(out_dir, full=, prediction_type=,
seed=)); ``ARCHES`` maps each full-shape arch name to its family. A new family adds one entry
to each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Byte-level vocab: 256 byte symbols, the same 256 with the end-of-word marker, then the two
# special tokens. No merges, so every word tokenizes to its bytes: enough for a real CLIP
# tokenizer with the real code path, and it keeps the embedding table tiny.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TINY_VOCAB_SIZE = 514


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-to-printable-character table (the order CLIP's vocab uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tokenizer(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    assert len(tokens) == TINY_VOCAB_SIZE
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        vocab=str(out / "vocab.json"),
        merges=str(out / "merges.txt"),
        model_max_length=77,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )
    tok.save_pretrained(out)


def _unet_config(arch: str) -> dict:
    if arch == "sd15":
        return dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    return dict(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _vae_config(arch: str) -> dict:
    if arch == "sd15":
        return dict(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
    return dict(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )


def _text_config(arch: str):
    from transformers import CLIPTextConfig

    common = dict(bos_token_id=TINY_VOCAB_SIZE - 2, eos_token_id=TINY_VOCAB_SIZE - 1, pad_token_id=TINY_VOCAB_SIZE - 1)
    if arch == "sd15":
        return CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", **common,
        )
    return CLIPTextConfig(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5, **common,
    )


def _sdxl_unet_config(full: bool) -> dict:
    if full:  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        return dict(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        )
    # diffusers' SDXL pipeline tests (get_dummy_components), with 32/64 channels so the LoRA
    # has real attention projections to train: 6 time ids x 8 + a 32-wide pooled embedding = 80.
    return dict(
        sample_size=32, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), cross_attention_dim=64,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80, norm_num_groups=32,
    )


def _sdxl_vae_config(full: bool) -> dict:
    if full:  # SDXL base vae/config.json
        return dict(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=1024,
            scaling_factor=0.13025, force_upcast=True,
        )
    return dict(**_vae_config("tiny"), scaling_factor=0.13025)


def _sdxl_text_config(full: bool, *, second: bool):
    """Encoder 1: CLIP ViT-L/14 text model; encoder 2: OpenCLIP ViT-bigG/14 (with projection)."""
    from transformers import CLIPTextConfig

    common = dict(bos_token_id=TINY_VOCAB_SIZE - 2, eos_token_id=TINY_VOCAB_SIZE - 1, pad_token_id=TINY_VOCAB_SIZE - 1,
                  max_position_embeddings=77)
    if full and second:
        return CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                              num_attention_heads=20, hidden_act="gelu", projection_dim=1280, **common)
    if full:
        return CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768, **common)
    return CLIPTextConfig(vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, layer_norm_eps=1e-5, hidden_act="gelu", projection_dim=32, **common)


def _quiet_imports() -> None:
    try:
        import train  # noqa: F401  (quiets third-party import-time noise; see train/__init__.py)
    except ImportError:
        pass
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar says nothing


def _tokenizer(out_dir: Path):
    """A byte-level CLIP tokenizer (written to a scratch folder, loaded, the folder removed)."""
    from transformers import CLIPTokenizer

    tok_dir = out_dir / "_tokenizer_src"
    write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return tokenizer


def _ddpm_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, steps_offset=1, prediction_type=prediction_type)


def build_sd(out_dir: Path, *, full: bool = False, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """SD 1.x: tiny, or SD 1.5-shaped (``full``)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    arch = "sd15" if full else "tiny"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_config(arch))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_vae_config(arch))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(arch))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(out_dir),
        scheduler=_ddpm_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    _write_like_published_checkpoints(out_dir)
    return out_dir


def _write_like_published_checkpoints(out_dir: Path) -> None:
    """Lay the folder out as published SD checkpoints are, so older readers load it too
    (transformers 4 gets a randomly initialised text encoder from transformers-5 key names, and
    its slow CLIPTokenizer needs vocab.json + merges.txt, which transformers 5 no longer saves)."""
    from safetensors.torch import load_file, save_file

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        for name in ("vocab.json", "merges.txt"):
            (out_dir / "tokenizer" / name).write_bytes((Path(tmp) / name).read_bytes())
    weights = out_dir / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()},
              str(weights), metadata={"format": "pt"})


def build_sdxl(out_dir: Path, *, full: bool = False, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """SDXL: tiny (diffusers' own test-sized components), or SDXL-base-shaped (``full``)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_sdxl_unet_config(full))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_sdxl_vae_config(full))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_sdxl_text_config(full, second=False))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_sdxl_text_config(full, second=True))
    # SDXL base ships an Euler sampler with the SD betas; training reads it as a DDPM schedule.
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                       prediction_type=prediction_type)
    tokenizer = _tokenizer(out_dir)
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, scheduler=scheduler, add_watermarker=False,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def _flow_builder(module: str, family: str, full_arch: str):
    """The flow-matching families' builders live in scripts/tiny_flux.py (FLUX.1, FLUX.2 Klein)
    and scripts/tiny_dit.py (Z-Image, Qwen-Image), imported late: they import this file."""
    def build(out_dir: Path, *, full: bool = False, prediction_type: str = "epsilon", seed: int = 0,
              variant: str | None = None) -> Path:
        import importlib

        if prediction_type != "epsilon":
            raise ValueError(f"--prediction-type: {family} models are flow-matching (velocity), not {prediction_type}")
        here = str(Path(__file__).resolve().parent)
        if here not in sys.path:
            sys.path.insert(0, here)
        builder = importlib.import_module(module)
        return builder.build(out_dir, family=family, arch=full_arch if full else "tiny", seed=seed, variant=variant)
    return build


# family -> builder; full-shape arch name -> family.
BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "flux": _flow_builder("tiny_flux", "flux", "flux-dev"),
            "flux2-klein": _flow_builder("tiny_flux", "flux2-klein", "flux2-klein-4b"),
            "z-image": _flow_builder("tiny_dit", "z-image", "z-image-6b"),
            "qwen-image": _flow_builder("tiny_dit", "qwen-image", "qwen-image-20b")}
ARCHES = {"tiny": None, "sd15": "sd", "sdxl": "sdxl", "flux-dev": "flux", "flux2-klein-4b": "flux2-klein",
          "z-image-6b": "z-image", "qwen-image-20b": "qwen-image"}
# Families with published variants, and theirs (the first is the default).
VARIANTS = {"flux2-klein": ("base", "distilled"), "z-image": ("base", "turbo")}


def build_pipeline(out_dir: Path, *, arch: str = "tiny", prediction_type: str = "epsilon", seed: int = 0,
                   family: str | None = None, variant: str | None = None) -> Path:
    """Build, save and return ``out_dir``. Deterministic for a given (family, arch, prediction_type, seed).

    ``arch`` "tiny" builds the tiny model of ``family`` (default sd); a full-shape arch
    ("sd15", "sdxl") implies its family.
    """
    _quiet_imports()
    if arch not in ARCHES:
        raise ValueError(f"arch {arch!r}: valid are {', '.join(ARCHES)}")
    implied = ARCHES[arch]
    if implied and family and family != implied:
        raise ValueError(f"arch {arch!r} is a {implied} model, not {family}")
    family = implied or family or "sd"
    if family not in BUILDERS:
        raise ValueError(f"family {family!r}: valid are {', '.join(BUILDERS)}")
    if variant is not None and variant not in VARIANTS.get(family, ()):
        raise ValueError(f"--variant {variant}: " + (f"{family} variants are {', '.join(VARIANTS[family])}"
                                                     if family in VARIANTS else f"{family} models have no variants")
                         + f" (families with variants: {', '.join(VARIANTS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"variant": variant} if variant is not None else {}
    return BUILDERS[family](out_dir, full=implied is not None, prediction_type=prediction_type, seed=seed, **extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon",
                   help="what the UNet is trained to predict (default: epsilon)")
    p.add_argument("--family", choices=tuple(BUILDERS), default=None,
                   help="model family of the tiny model (default: sd; a full-shape --arch implies its family)")
    p.add_argument("--arch", choices=tuple(ARCHES), default="tiny",
                   help="tiny test model, or a published shape (random weights) for benchmarks (default: tiny)")
    p.add_argument("--variant", choices=sorted({v for vs in VARIANTS.values() for v in vs}), default=None,
                   help="the published variant to imitate: flux2-klein base (default; what LoRAs train on) or "
                        "distilled, z-image base (default) or turbo")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    a = p.parse_args(argv)
    try:
        out = build_pipeline(a.out_dir, arch=a.arch, prediction_type=a.prediction_type, seed=a.seed, family=a.family,
                             variant=a.variant)
    except ValueError as exc:
        p.error(str(exc))
    print(f"wrote {a.family or ARCHES[a.arch] or 'sd'} {a.arch} pipeline ({a.prediction_type}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
