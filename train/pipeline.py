"""The base model: loaded once per host, reused by every task, left clean after each.

``load_base`` finds the family of a diffusers pipeline folder (``train.families``), lets it
load its components and freezes them. Tasks attach a LoRA (``attach_lora``), train it, and
remove it again (``detach_lora``), so a task's result never depends on what ran before it on
the same ``BaseModel``. Nothing here knows a particular family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.config import MIXED_PRECISION
from train.errors import ConfigError
from train.families import Family, family_of, read_model_index

ADAPTER = "default"


@dataclass
class BaseModel:
    path: Path
    family: Family
    modules: dict[str, Any]        # components by diffusers name (unet, vae, text_encoder, ..., noise_scheduler)
    device: Any                   # torch.device
    weight_dtype: Any             # dtype of the frozen weights (fp32, or fp16/bf16 with mixed precision)
    mixed_precision: str = "no"
    quantization: str = "none"     # base_quantization it was loaded with (nf4/int8: a QLoRA base)
    variant: str = ""              # the family's variant (Family.detect_variant; "" when it has one)

    def __getattr__(self, name: str) -> Any:
        # base.unet, base.text_encoder_2, base.transformer ...: the family's components.
        modules = self.__dict__.get("modules")
        if modules is not None and name in modules:
            return modules[name]
        raise AttributeError(f"{type(self).__name__} of family {self.__dict__.get('family')!r} has no {name!r}")

    @property
    def denoiser(self) -> Any:
        return self.modules[self.family.denoiser]

    @property
    def prediction_type(self) -> str:
        return self.modules["noise_scheduler"].config.prediction_type

    def torch_modules(self) -> dict[str, Any]:
        import torch

        return {k: m for k, m in self.modules.items() if isinstance(m, torch.nn.Module)}

    def identity(self) -> str:
        """A short content hash of the weights (not of paths or mtimes: a restarted job that
        downloads the same model again must find its cached class images)."""
        from train.fingerprint import base_model_identity

        return base_model_identity(self.path)["weights_sha256"][:16]

    def pipeline(self, scheduler: Any = None):
        """The family's pipeline over the in-memory modules (nothing is reloaded)."""
        return self.family.pipeline(self, scheduler)


def load_base(model_dir, *, mixed_precision: str = "no", device: str | None = None,
              base_quantization: str = "none", **options: Any) -> BaseModel:
    """Load the frozen components of ``model_dir`` (any supported family); with
    ``base_quantization`` nf4/int8 the family quantizes its frozen denoiser here, once (the
    warm worker loads once per host). Other ``options`` go to the family's ``load``."""
    import torch

    path = Path(model_dir)
    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision: {mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}")
    family = family_of(path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if mixed_precision == "fp16" and dev.type != "cuda":
        raise ConfigError("mixed_precision (--mixed-precision): fp16 needs a CUDA GPU; use bf16 or no on CPU")
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    modules = family.load(path, dev, dtype, **options)
    if base_quantization != "none":
        family.quantize(modules, base_quantization, dev, dtype)
    base = BaseModel(path=path, family=family, modules=modules, device=dev, weight_dtype=dtype,
                     mixed_precision=mixed_precision, quantization=base_quantization,
                     variant=family.detect_variant(path, read_model_index(path)))
    for module in base.torch_modules().values():
        module.requires_grad_(False)
        if not _placed(module):
            module.to(dev)
        module.eval()
    return base


def _placed(module) -> bool:
    """Quantized (bitsandbytes) or offloaded modules are placed by their loader, not moved."""
    return bool(getattr(module, "is_loaded_in_4bit", False) or getattr(module, "is_loaded_in_8bit", False)
                or getattr(module, "_keep_placement", False))


def attach_lora(base: BaseModel, cfg) -> list:
    """Add a fresh LoRA adapter (rank, alpha, checkpointing from the task's ``cfg``) to the
    family's targets; return its trainable parameters. The LoRA init draws from torch's global
    RNG: the caller seeds it first."""
    import torch
    from peft import LoraConfig

    params = []
    targets_by_module = base.family.lora_targets(cfg)
    for name, targets in targets_by_module.items():
        _check_targets(base, name, targets, custom=bool(cfg.lora_targets) and name == base.family.denoiser)
    for name, targets in targets_by_module.items():
        module = base.modules[name]
        module.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                      target_modules=list(targets)), adapter_name=ADAPTER)
        if cfg.gradient_checkpointing:
            _call_first(module, "enable_gradient_checkpointing", "activation_checkpointing_enable",
                        "gradient_checkpointing_enable")
        module.train()
        params += [p for p in module.parameters() if p.requires_grad]
    for p in params:  # trainable LoRA weights stay fp32 under mixed precision
        p.data = p.data.to(torch.float32)
    return params


def _check_targets(base: BaseModel, name: str, targets, *, custom: bool) -> None:
    """Every target must name a layer of the module (peft only refuses when none matches)."""
    paths = [path for path, _ in base.modules[name].named_modules()]
    missing = [t for t in targets if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        where = "lora_target_modules (--lora-target-modules)" if custom else f"the {base.family.name} LoRA targets"
        raise ConfigError(f"{where}: {', '.join(missing)} is not a layer of the {name} of this "
                          f"{base.family.title} model (e.g. {', '.join(base.family.denoiser_targets)})")


def trained_modules(base: BaseModel, cfg) -> list:
    return [base.modules[name] for name in base.family.trained_components(cfg)]


def lora_state(base: BaseModel, cfg) -> dict[str, Any]:
    """The trainable LoRA tensors by "<component>.<parameter name>" (resume state)."""
    return {f"{prefix}.{name}": p for prefix in base.family.trained_components(cfg)
            for name, p in base.modules[prefix].named_parameters() if p.requires_grad}


def detach_lora(base: BaseModel) -> None:
    """Remove every LoRA layer again, so ``base`` is exactly as ``load_base`` left it."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    for module in base.torch_modules().values():
        if getattr(module, "peft_config", None) is not None or getattr(module, "_hf_peft_config_loaded", False):
            recurse_remove_peft_layers(module)
            if hasattr(module, "peft_config"):
                del module.peft_config
            if hasattr(module, "_hf_peft_config_loaded"):
                module._hf_peft_config_loaded = False
        if getattr(module, "is_gradient_checkpointing", False) or getattr(module, "is_activation_checkpointing", False):
            _call_first(module, "disable_gradient_checkpointing", "activation_checkpointing_disable",
                        "gradient_checkpointing_disable")
        module.requires_grad_(False)
        module.eval()


def _call_first(module: Any, *names: str) -> None:
    """Call the first of ``names`` the module has (transformers renamed gradient checkpointing)."""
    for name in names:
        if hasattr(module, name):
            getattr(module, name)()
            return
