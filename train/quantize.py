"""Quantizing a loaded frozen module: the base of QLoRA, one code path on CPU and GPU.

diffusers' ``BitsAndBytesConfig`` quantizes while loading, and refuses to load at all without a
GPU. Here the module is loaded as usual and its ``nn.Linear`` layers are then replaced by
bitsandbytes' ``Linear4bit`` (NF4, double-quantized statistics, as the QLoRA recipes for Flux
do) or ``Linear8bitLt`` (LLM.int8 weights); bitsandbytes quantizes each weight when it is moved
to the device, on CUDA or on the CPU. The module is then flagged the way diffusers' own
quantizer flags it (``is_loaded_in_4bit`` / ``is_loaded_in_8bit``), so peft attaches its
bitsandbytes LoRA layers over the quantized ones and diffusers' LoRA loader recognises the
module. This runs once, when the base model is loaded (once per host in the warm worker).
"""

from __future__ import annotations

from typing import Any, Iterable

from train.errors import ConfigError

BASE_QUANTIZATIONS = ("none", "nf4", "int8")


def quantize_linears(module: Any, kind: str, *, device: Any, compute_dtype: Any,
                     skip: Iterable[str] = ()) -> int:
    """Replace every ``nn.Linear`` of ``module`` (except names containing one of ``skip``) by
    its ``kind`` bitsandbytes layer on ``device``; return how many were replaced."""
    if kind == "none":
        return 0
    if kind not in BASE_QUANTIZATIONS:
        raise ConfigError(f"base_quantization: {kind!r} is not one of {', '.join(BASE_QUANTIZATIONS)}")
    import torch

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:  # the train extra installs it
        raise ConfigError(f"base_quantization={kind} needs bitsandbytes (pip install bitsandbytes): {e}") from None
    skip = tuple(skip) + tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    targets = [(name, m) for name, m in module.named_modules()
               if type(m) is torch.nn.Linear and not any(s in name.split(".") for s in skip)]
    for name, linear in targets:
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, child, _quantized(linear, kind, device, compute_dtype))
    module.to(device)  # what was not replaced (norms, embeddings, convolutions)
    setattr(module, "is_loaded_in_4bit" if kind == "nf4" else "is_loaded_in_8bit", True)
    return len(targets)


def _quantized(linear: Any, kind: str, device: Any, compute_dtype: Any) -> Any:
    import bitsandbytes as bnb
    import torch

    bias = linear.bias is not None
    weight = linear.weight.data
    if kind == "nf4":
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
                              compress_statistics=True, quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
        # bitsandbytes repacks CPU weights for an AVX512-bf16 kernel the first time an eval-mode
        # layer runs without grad (previews): bf16 scales, so previews would not compute what
        # training computes, and it needs in_features % 64 == 0. One path on CPU instead.
        q.support_avx512bf16_for_cpu = False
    else:
        # threshold 6.0: LLM.int8's outlier split, diffusers' BitsAndBytesConfig default.
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                threshold=6.0, device="meta")
        q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias:
        q.bias = torch.nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    q.requires_grad_(False)
    return q.to(device)  # bitsandbytes quantizes the weight here, on the target device


def quantized_kind(module: Any) -> str:
    """``nf4``, ``int8`` or ``none``: what ``quantize_linears`` did to ``module``."""
    if getattr(module, "is_loaded_in_4bit", False):
        return "nf4"
    return "int8" if getattr(module, "is_loaded_in_8bit", False) else "none"
