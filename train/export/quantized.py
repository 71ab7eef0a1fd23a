"""Quantized merged pipelines: the fused UNet re-loaded through diffusers' quantization configs.

- int8: torchao int8 weight-only (`Int8WeightOnlyConfig`), CPU and GPU. torchao tensors are
  not safetensors-serializable, so that UNet is saved as a pickle (`.bin`).
- nf4 / bnb8: bitsandbytes 4-bit NF4 / LLM.int8 through `BitsAndBytesConfig`; diffusers only
  loads those on a GPU ("No GPU found"), so the caller skips them on CPU.

Each output is a whole pipeline folder (text encoder, VAE, tokenizer, scheduler copied from
the fused fp16 source) whose unet/config.json carries `quantization_config`, so a plain
`StableDiffusionPipeline.from_pretrained(folder)` loads it quantized.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .errors import ExportError

KINDS = ("int8", "nf4", "bnb8")


def quantization_config(kind: str):
    from diffusers import BitsAndBytesConfig, TorchAoConfig

    if kind == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.float16)
    if kind == "bnb8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ExportError(f"unknown quantization {kind!r}; valid: {', '.join(KINDS)}")


def load_dtype(kind: str) -> torch.dtype:
    # diffusers supports torchao integer quantization in bf16 only; bitsandbytes runs fp16 compute.
    return torch.bfloat16 if kind == "int8" else torch.float16


def write_quantized_pipeline(source: Path, out_dir: Path, kind: str, denoiser: str = "unet") -> Path:
    """Copy the fused pipeline folder `source` to `out_dir` with its denoiser (the UNet, or a
    family's transformer) quantized as `kind`."""
    import diffusers

    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(source, out_dir, ignore=lambda d, names: [denoiser] if Path(d) == source else [])
    model_class = getattr(diffusers, json.loads((source / denoiser / "config.json").read_text())["_class_name"])
    # bitsandbytes places the quantized weights on the current GPU itself (device_map=None).
    model = model_class.from_pretrained(
        source, subfolder=denoiser, quantization_config=quantization_config(kind), dtype=load_dtype(kind))
    # torchao's tensor subclasses only serialize with pickle; bitsandbytes weights go to safetensors.
    model.save_pretrained(out_dir / denoiser, safe_serialization=kind != "int8")
    del model
    return out_dir


def load_pipeline(folder: Path, *, device, dtype: torch.dtype, family=None):
    """Load an exported pipeline folder the way a user would (with the family's pipeline class;
    SD when none is given). Quantized denoisers keep their own compute dtype; they are placed by
    their quantizer (bitsandbytes weights are already on GPU)."""
    if family is None:
        from train.families import family_named

        family = family_named("sd")
    config = json.loads((Path(folder) / family.denoiser / "config.json").read_text())
    quant = config.get("quantization_config", {}).get("quant_method")
    pipe = family.load_pipeline(folder, dtype=dtype if quant is None else _quant_load_dtype(quant))
    if quant == "bitsandbytes":
        # .to() on a bnb model is refused; move the other components only.
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and name != family.denoiser:
                module.to(device)
        return pipe
    return pipe.to(device)


def _quant_load_dtype(quant_method: str) -> torch.dtype:
    return torch.bfloat16 if quant_method == "torchao" else torch.float16
