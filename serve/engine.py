"""One base pipeline on one device, and the only code that changes its adapter.

At start: the family's pipeline is loaded from the base folder (the trainer's ``model``
folder: family and component layout from its model_index.json), a zero LoRA of the hotswap
target rank is loaded on every served layer (``adapters.null_adapter``), and on CUDA the
denoiser is compiled. Per request, under the engine's lock, ``render`` swaps the request's
adapter in with ``load_lora_adapter(..., hotswap=True)`` (diffusers' hotswap: the LoRA tensors
are overwritten in place, so a compiled graph stays valid) and runs the pipeline. Text-encoder
parts, which diffusers cannot hotswap, are loaded as a second adapter and deleted again when
the next request's adapter differs. The lock is held from the swap to the last image: two
requests never share the pipeline, so none sees another's adapter (docs/serving.md).
"""

from __future__ import annotations

import logging
import threading
import types
from pathlib import Path

from serve.adapters import Adapter, ServedBase, null_adapter
from serve.config import ServeConfig, family_defaults
from serve.errors import ConfigError, Unprocessable
from serve.request import Generation, Limits

log = logging.getLogger("serve")
SERVED = "served"           # the hotswapped denoiser adapter
TEXT_ADAPTER = "served-text"  # text-encoder parts (not hotswappable)
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class Engine:
    def __init__(self, cfg: ServeConfig, base_dir: Path, device: str, weights_sha256: str | None):
        import torch

        from train.families import family_of, read_model_index

        self.cfg, self.base_dir, self.device = cfg, Path(base_dir), torch.device(device)
        self.family = family_of(base_dir)
        self.variant = self.family.detect_variant(self.base_dir, read_model_index(self.base_dir))
        self.defaults = family_defaults(self.family, self.variant, self.family.pipeline_type())
        self.dtype = self._dtype()
        self.pipe = self._load()
        if self.device.type == "cpu":
            _own_memory(self.pipe)
        self.denoiser = getattr(self.pipe, self.family.denoiser)
        self.served = ServedBase(family=self.family.name, weights_sha256=weights_sha256,
                                 denoiser=self.family.denoiser, text_encoders=tuple(self.family.text_encoders),
                                 layers=self._served_layers(), max_rank=cfg.max_rank,
                                 pipeline_class=type(self.pipe))
        self.pipe.enable_lora_hotswap(target_rank=cfg.max_rank)
        self.denoiser.load_lora_adapter(null_adapter(self.served), prefix=self.family.denoiser, adapter_name=SERVED)
        self.compiled = self._compile()
        self.lock = threading.Lock()
        self.current: str | None = None       # key of the adapter in the pipeline now
        self.swaps = 0
        self.limits = self._limits()
        # What Family.sampling_kwargs reads of a loaded base (its variant), for this pipeline.
        self._sampling_view = types.SimpleNamespace(variant=self.variant)

    # --- start ------------------------------------------------------------------------------

    def _dtype(self):
        import torch

        name = self.cfg.dtype
        if name == "auto" and self.device.type == "cpu":
            name = "fp32"
        elif name == "auto":  # the recipe's precision as this GPU has it (fp16 on a T4 or V100)
            from train.recipes import Device

            name = Device("cuda", bool(torch.cuda.is_bf16_supported())).precision(self.defaults.dtype_cuda)
        if name == "fp16" and self.device.type == "cpu":
            raise ConfigError("dtype=fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
        return getattr(torch, DTYPE_NAMES[name])

    def _load(self):
        """The whole pipeline on this device, for as long as the server runs. Not the family's
        ``load_pipeline``: on a GPU a flow family's keeps it in CPU memory, each model moved in
        only while it runs (right for the export check's second copy, wrong for a warm base)."""
        quant = {}
        if self.cfg.quantization != "none":
            if self.device.type != "cuda":
                raise ConfigError(f"quantization={self.cfg.quantization}: bitsandbytes quantization needs a CUDA GPU")
            from diffusers import PipelineQuantizationConfig

            backend = {"nf4": "bitsandbytes_4bit", "int8": "bitsandbytes_8bit"}[self.cfg.quantization]
            kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": self.dtype} \
                if self.cfg.quantization == "nf4" else {"load_in_8bit": True}
            # The denoiser (and FLUX.1's T5) hold nearly all the weights: the trainer quantizes the same ones.
            components = list(getattr(self.family, "quantized_components", (self.family.denoiser,)))
            quant["quantization_config"] = PipelineQuantizationConfig(
                quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=components)
        pipe = self.family.pipeline_type().from_pretrained(str(self.base_dir), dtype=self.dtype, **quant,
                                                           **self.family.load_kwargs())
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def _served_layers(self) -> dict[str, tuple[int, int]]:
        """Linear layers of the denoiser that the family's LoRA targets (and --lora-targets) name."""
        import torch

        if hasattr(self.family, "_num_single_layers") and hasattr(self.denoiser.config, "num_single_layers"):
            self.family._num_single_layers = self.denoiser.config.num_single_layers  # Klein: one name per block
        wanted = self.family.lora_targets(types.SimpleNamespace(lora_targets=(), train_text_encoder=False))
        targets = tuple(wanted[self.family.denoiser]) + self.cfg.extra_targets
        layers = {name: (m.in_features, m.out_features) for name, m in self.denoiser.named_modules()
                  if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)}
        if not layers:
            raise ConfigError(f"no layer of the {self.family.denoiser} matches the LoRA targets {', '.join(targets)}")
        return layers

    def _compile(self) -> bool:
        on = self.cfg.compile == "on" or (self.cfg.compile == "auto" and self.device.type == "cuda")
        if on:
            # After the first (zero) adapter is in, as diffusers' hotswap requires; later swaps
            # overwrite the same tensors, so the graph is never recompiled for a new user.
            self.denoiser.compile(fullgraph=False)
        return on

    def _limits(self) -> Limits:
        pipe = self.pipe
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        flow = self.family.denoiser == "transformer"
        multiple = scale * 2 if flow else scale  # flow transformers pack 2x2 latent patches
        sample = getattr(pipe, "default_sample_size", None) or getattr(self.denoiser.config, "sample_size", 64)
        side = int(sample) * scale
        return Limits(max_images=self.cfg.max_images, max_steps=self.cfg.max_steps, max_side=self.cfg.max_side,
                      size_multiple=multiple, default_height=side, default_width=side, defaults=self.defaults)

    # --- per request -------------------------------------------------------------------------

    def render(self, gen: Generation, adapter: Adapter) -> tuple[list, bool, list[str]]:
        """The images of ``gen`` with exactly ``adapter`` in the pipeline, whether it was already
        in (no swap), and what the tokenizers cut from the prompt. One request at a time per
        engine: the tokenizers are the pipeline's too (fast tokenizers are not thread-safe:
        another thread's call can change the padding and truncation of this one's)."""
        import torch

        with self.lock:
            warnings = self.prompt_warnings(gen.prompt)
            hot = self.current == adapter.key
            if not hot:
                self._swap(adapter)
            kwargs = dict(prompt=gen.prompt, num_inference_steps=gen.steps, height=gen.height, width=gen.width,
                          num_images_per_prompt=gen.count, generator=torch.Generator("cpu").manual_seed(gen.seed),
                          # the family's guidance keywords (Qwen-Image: true_cfg_scale; Z-Image Turbo: none)
                          **self.family.sampling_kwargs(self._sampling_view, gen.guidance))
            if gen.negative_prompt is not None:
                kwargs["negative_prompt"] = gen.negative_prompt
            with torch.inference_mode():
                images = self.pipe(**kwargs).images
        return images, hot, warnings

    def _swap(self, adapter: Adapter) -> None:
        self.current = None  # until the swap has fully succeeded
        try:
            state = adapter.denoiser or null_adapter(self.served)
            self.denoiser.load_lora_adapter(dict(state), prefix=self.family.denoiser, adapter_name=SERVED,
                                            hotswap=True, _pipeline=self.pipe,
                                            network_alphas=adapter.network_alphas if adapter.denoiser else None,
                                            metadata=adapter.metadata if adapter.denoiser else None)
            self._swap_text_encoders(adapter)
        except Exception as exc:
            self._reset()
            raise Unprocessable(f"model {adapter.key}: cannot be swapped into this server's pipeline "
                                f"({type(exc).__name__}: {str(exc)[:300]})") from None
        self.current = adapter.key
        self.swaps += 1

    def _swap_text_encoders(self, adapter: Adapter) -> None:
        for name in self.served.text_encoders:
            encoder = getattr(self.pipe, name, None)
            if encoder is not None and TEXT_ADAPTER in (getattr(encoder, "peft_config", None) or {}):
                encoder.delete_adapter(TEXT_ADAPTER)
        for name, state in adapter.text_encoders.items():
            type(self.pipe).load_lora_into_text_encoder(
                dict(state), network_alphas=adapter.network_alphas, text_encoder=getattr(self.pipe, name),
                prefix=name, lora_scale=1.0, adapter_name=TEXT_ADAPTER, _pipeline=self.pipe,
                metadata=adapter.metadata)

    def _reset(self) -> None:
        """After a failed swap: zeros everywhere (the base alone), so nothing half-swapped stays."""
        try:
            self.denoiser.load_lora_adapter(null_adapter(self.served), prefix=self.family.denoiser,
                                            adapter_name=SERVED, hotswap=True)
            self._swap_text_encoders(Adapter(key="", rank=0, denoiser={}))
        except Exception:  # the pipeline itself is broken: say so loudly, /ping turns unhealthy
            log.exception("could not reset the pipeline after a failed swap")
            raise

    # --- prompts -----------------------------------------------------------------------------

    def prompt_warnings(self, prompt: str) -> list[str]:
        """What each tokenizer of the pipeline drops from ``prompt`` (the pipeline truncates it)."""
        warnings = []
        for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tok = getattr(self.pipe, name, None)
            if tok is None:
                continue
            limit = _token_limit(self.pipe, name, tok)
            ids = tok(prompt, truncation=False, add_special_tokens=True).input_ids
            if limit and len(ids) > limit:
                kept = tok.decode(ids[:limit], skip_special_tokens=True)
                warnings.append(f"prompt is {len(ids)} tokens for {name} ({type(tok).__name__}), which reads "
                                f"{limit}: truncated as the pipeline does, to {kept[-80:]!r}")
        return warnings


def _token_limit(pipe, name: str, tok) -> int | None:
    """CLIP tokenizers read model_max_length (77); T5 / Qwen ones the pipeline's max_sequence_length (512)."""
    if "CLIP" in type(tok).__name__:
        return tok.model_max_length
    import inspect

    default = inspect.signature(type(pipe).__call__).parameters.get("max_sequence_length")
    if default is not None and isinstance(default.default, int):
        return default.default
    limit = getattr(tok, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 100_000 else None


def _own_memory(pipe) -> None:
    """On the CPU, copy every weight out of the safetensors memory map into memory of its own:
    no page faults in the first requests, and every tensor at an allocator's alignment (oneDNN
    picks kernels by alignment, so a mapped and an allocated copy of one weight can differ in
    the last bit; with owned memory the server draws what any fresh in-memory copy draws)."""
    import torch

    with torch.no_grad():
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in list(module.parameters()) + list(module.buffers()):
                    tensor.data = tensor.data.clone()


def devices(cfg: ServeConfig) -> list[str]:
    """One engine per CUDA GPU, or the CPU."""
    import torch

    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return ["cpu"]
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA GPU")
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
