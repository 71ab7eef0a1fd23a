"""A user's LoRA as the engine swaps it in: read once from its folder, checked against the
served base, split by component, kept in memory (``MemoryCache``) between requests.

Checked before anything touches the pipeline (a failed check is a 422 naming why):
- the manifest's (or the models table's) family is the base's family, and the manifest's base
  weights hash, when it has one, is the served base's;
- the file parses as a diffusers LoRA of this family's pipeline;
- every denoiser LoRA layer is one the server serves (hotswap cannot add layers), with the
  layer's input/output sizes, and a rank no higher than the hotswap target rank;
- text-encoder parts only for the text encoders this family trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from serve.errors import Unprocessable
from serve.sources import MANIFEST, ModelRef

LORA_PARTS = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True)
class ServedBase:
    """What an adapter is checked against (filled in by the engine from the loaded base)."""

    family: str
    weights_sha256: str | None
    denoiser: str                                   # "unet" or "transformer"
    text_encoders: tuple[str, ...]                  # components that may carry a LoRA part
    layers: Mapping[str, tuple[int, int]]           # served denoiser layer -> (in, out) features
    max_rank: int
    pipeline_class: Any                             # for lora_state_dict (the family's own key converters)


@dataclass
class Adapter:
    key: str
    rank: int
    denoiser: dict[str, Any]                        # the file's denoiser keys, as lora_state_dict gave them
    text_encoders: dict[str, dict[str, Any]] = field(default_factory=dict)   # component -> its keys
    network_alphas: dict | None = None
    metadata: dict | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        parts = [self.denoiser, *self.text_encoders.values()]
        return sum(t.numel() * t.element_size() for part in parts for t in part.values())


def read_adapter(ref: ModelRef, folder: Path, served: ServedBase) -> Adapter:
    """Load and check the LoRA in ``folder`` (Unprocessable says what is wrong with it)."""
    manifest = _manifest(folder)
    _check_origin(ref, manifest, served)
    path = folder / ref.weight_name
    try:
        out = served.pipeline_class.lora_state_dict(str(folder), weight_name=ref.weight_name,
                                                     return_lora_metadata=True)
    except Exception as exc:  # whatever the file is, it is not a LoRA this base's pipeline reads
        raise Unprocessable(f"model {ref.name}: {path.name} is not a {served.family} LoRA diffusers can read "
                            f"({type(exc).__name__}: {str(exc)[:300]})") from None
    state, alphas, metadata = _unpack(out)
    parts = _split(ref, state, served)
    denoiser = parts.pop(served.denoiser, {})
    if not denoiser and not parts:
        raise Unprocessable(f"model {ref.name}: {path.name} holds no LoRA weights")
    rank = _check_layers(ref, denoiser, served) if denoiser else 0
    return Adapter(key=ref.key, rank=rank, denoiser=denoiser, text_encoders=parts, network_alphas=alphas or None,
                   metadata=metadata, manifest=manifest)


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def check_ref(ref: ModelRef, served: ServedBase) -> None:
    """What the models table says of the model, checked on every request (before any cache)."""
    _check_origin(ref, {}, served)


def _check_origin(ref: ModelRef, manifest: dict, served: ServedBase) -> None:
    for source, family in (("manifest.json", manifest.get("family")), ("the models table", ref.family)):
        if family and family != served.family:
            raise Unprocessable(f"model {ref.name}: trained on a {family} base ({source}); this server serves a "
                                f"{served.family} base, so it cannot render it")
    trained_on = (manifest.get("base_model") or {}).get("weights_sha256")
    if trained_on and served.weights_sha256 and trained_on != served.weights_sha256:
        raise Unprocessable(f"model {ref.name}: trained on another {served.family} base (weights sha256 "
                            f"{trained_on[:12]}…, this server's base is {served.weights_sha256[:12]}…)")


def _unpack(out) -> tuple[dict, dict | None, dict | None]:
    """lora_state_dict returns (state, alphas, metadata) for UNet pipelines, (state, metadata)
    for transformer ones."""
    if not isinstance(out, tuple):
        return out, None, None
    if len(out) == 3:
        return out
    return out[0], None, out[1] if len(out) > 1 else None


def _split(ref: ModelRef, state: dict, served: ServedBase) -> dict[str, dict]:
    parts: dict[str, dict] = {}
    for key, value in state.items():
        parts.setdefault(key.split(".", 1)[0], {})[key] = value
    allowed = (served.denoiser, *served.text_encoders)
    other = sorted(set(parts) - set(allowed))
    if other:
        raise Unprocessable(f"model {ref.name}: LoRA weights for {', '.join(other)}, which this {served.family} "
                            f"base takes no LoRA on (it takes: {', '.join(allowed)})")
    return parts


def _check_layers(ref: ModelRef, denoiser: dict, served: ServedBase) -> int:
    """Every layer served, of the right size, rank within the limit; returns the highest rank."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    prefix = served.denoiser + "."
    plain = {k[len(prefix):]: v for k, v in denoiser.items()}
    if "lora_A" not in next(iter(plain)):
        plain = convert_unet_state_dict_to_peft(plain)
    odd = sorted(k for k in plain if not k.endswith(LORA_PARTS))
    if odd:
        raise Unprocessable(f"model {ref.name}: weights other than plain LoRA A/B matrices ({', '.join(odd[:3])}); "
                            "DoRA, biases and other adapter kinds cannot be hotswapped")
    layers: dict[str, dict[str, Any]] = {}
    for key, value in plain.items():
        layer, part = key.rsplit(".lora_", 1)
        layers.setdefault(layer, {})[part.split(".")[0]] = value
    unserved = sorted(name for name in layers if name not in served.layers)
    if unserved:
        raise Unprocessable(f"model {ref.name}: LoRA on {len(unserved)} layer(s) this server does not serve, e.g. "
                            f"{', '.join(unserved[:3])}: a LoRA made for another base, or on custom layers (hotswap cannot add "
                            "layers; serve those with --lora-targets)")
    rank = 0
    for name, pair in layers.items():
        a, b = pair.get("A"), pair.get("B")
        size_in, size_out = served.layers[name]
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[1] != size_in or b.shape[0] != size_out \
                or a.shape[0] != b.shape[1]:
            shapes = f"A {tuple(a.shape) if a is not None else None}, B {tuple(b.shape) if b is not None else None}"
            raise Unprocessable(f"model {ref.name}: layer {name} is {size_in}->{size_out} in this base, but the LoRA "
                                f"has {shapes}: it was made for another base or is malformed")
        rank = max(rank, a.shape[0])
    if rank > served.max_rank:
        raise Unprocessable(f"model {ref.name}: LoRA rank {rank} is over this server's hotswap target rank "
                            f"{served.max_rank} (--max-rank); a compiled model cannot take it without recompiling, "
                            "so it is refused rather than served wrong: restart with --max-rank >= "
                            f"{rank}")
    return rank


def null_adapter(served: ServedBase) -> dict[str, Any]:
    """A zero LoRA of rank ``max_rank`` on every served layer: loaded first, so that every user
    adapter is a subset of its layers and swaps in (missing layers are zeroed by the swap)."""
    import torch

    state = {}
    for name, (size_in, size_out) in served.layers.items():
        state[f"{served.denoiser}.{name}.lora_A.weight"] = torch.zeros(served.max_rank, size_in)
        state[f"{served.denoiser}.{name}.lora_B.weight"] = torch.zeros(size_out, served.max_rank)
    return state
