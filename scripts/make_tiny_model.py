#!/usr/bin/env python3
"""Build a Stable Diffusion pipeline with random weights, offline.

    python scripts/make_tiny_model.py OUT_DIR [--prediction-type epsilon|v_prediction]
                                              [--arch tiny|sd15] [--seed 0]

Nothing is downloaded: the UNet, VAE and CLIP text encoder are built from small configs (or,
with ``--arch sd15``, from the published SD 1.5 config numbers, so compute and memory are the
real model's), and the CLIP tokenizer is written from a byte-level vocabulary. The folder is
saved with ``save_pretrained`` and loads with ``DiffusionPipeline.from_pretrained(OUT_DIR)``.
The same seed always gives the same weights.
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


def build_pipeline(out_dir: Path, *, arch: str = "tiny", prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Build, save and return ``out_dir``. Deterministic for a given (arch, prediction_type, seed)."""
    try:
        import train  # noqa: F401  (quiets third-party import-time noise; see train/__init__.py)
    except ImportError:
        pass
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar says nothing

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_config(arch))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_vae_config(arch))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(arch))
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    tok_dir = out_dir / "_tokenizer_src"
    write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    _write_like_published_checkpoints(out_dir, tok_dir)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out_dir


def _write_like_published_checkpoints(out_dir: Path, tok_dir: Path) -> None:
    """Lay the folder out as published SD checkpoints are, so older readers load it too
    (transformers 4 gets a randomly initialised text encoder from transformers-5 key names, and
    its slow CLIPTokenizer needs vocab.json + merges.txt, which transformers 5 no longer saves)."""
    from safetensors.torch import load_file, save_file

    for name in ("vocab.json", "merges.txt"):
        (out_dir / "tokenizer" / name).write_bytes((tok_dir / name).read_bytes())
    weights = out_dir / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()},
              str(weights), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon",
                   help="what the UNet is trained to predict (default: epsilon)")
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny",
                   help="tiny test model, or SD1.5-shaped random weights for benchmarks (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    a = p.parse_args(argv)
    out = build_pipeline(a.out_dir, arch=a.arch, prediction_type=a.prediction_type, seed=a.seed)
    print(f"wrote {a.arch} pipeline ({a.prediction_type}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
