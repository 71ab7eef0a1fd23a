"""The one table of export formats: name, writer, loader, needs-GPU, families, load hint.

Everything that knows about a format reads it from here: the config checks (valid names,
which family can produce which format, refused before any model loads), the writing order,
the GPU skip, the drift round trip (loader) and the load hint in ``manifest.json``. Writers
and loaders are named functions of ``train.export.exporter`` (resolved there), so this module
stays importable without torch. A new format = one row here + its writer (and loader).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    writer: str                       # function of train.export.exporter: (job, lora parts) -> path written
    loader: str | None                # function of train.export.exporter: job -> pipeline (None: not rendered)
    needs_gpu: bool                   # skipped (recorded as such) on a machine without CUDA
    families: tuple[str, ...]         # model families that can produce it
    load_hint: str                    # how a user loads it; {pipeline} = the family's pipeline class
    help: str = ""
    check: str | None = None          # function of train.export.exporter: (job, path) -> entry fields,
                                      # run instead of the drift render (formats diffusers cannot load)


ALL = ("sd", "sdxl")
FLOW = ("flux", "flux2-klein", "z-image", "qwen-image")  # LoRA files only: no merge into a (maybe quantized) base
MERGED_HINT = "{pipeline}.from_pretrained({rel!r}{dtype})"

# In writing order: the quantized ones read the merged weights; `mme` and `triton` pack
# something already written, so they come last.
TABLE: tuple[Format, ...] = (
    Format("lora", "_write_lora", "_load_lora", False, ALL + FLOW,
           "{pipeline}.from_pretrained(BASE).load_lora_weights(MODEL_DIR)",
           "pytorch_lora_weights.safetensors (diffusers; always written)"),
    Format("kohya", "_write_kohya", "_load_kohya", False, ALL + FLOW,
           "{pipeline}.from_pretrained(BASE).load_lora_weights(MODEL_DIR, weight_name={rel!r})",
           "kohya-ss / A1111 / Forge / ComfyUI copy (lora_unet_*, lora_te*_*, .alpha)"),
    Format("merged-fp16", "_write_merged_fp16", "_load_merged", False, ALL, MERGED_HINT,
           "the LoRA fused into the base, a whole fp16 pipeline folder"),
    Format("merged-int8", "_write_merged_int8", "_load_merged", False, ALL, MERGED_HINT,
           "merged, denoiser torchao int8 weight-only"),
    Format("merged-nf4", "_write_merged_nf4", "_load_merged", True, ALL, MERGED_HINT,
           "merged, denoiser bitsandbytes NF4 (GPU)"),
    Format("merged-bnb8", "_write_merged_bnb8", "_load_merged", True, ALL, MERGED_HINT,
           "merged, denoiser bitsandbytes LLM.int8 (GPU)"),
    Format("onnx", "_write_onnx", None, False, ("sd",),
           "optimum.onnxruntime.ORTStableDiffusionPipeline.from_pretrained({rel!r}), or "
           "onnxruntime.InferenceSession('{rel}/unet/model.onnx') (also text_encoder/, vae_decoder/)",
           "LoRA fused into UNet (and text encoder), with the VAE decoder, as ONNX (torch.onnx dynamo)",
           check="_check_onnx"),
    # The archives' handlers serve StableDiffusionPipeline only (mme_handler.py, triton_model.py).
    Format("mme", "_write_mme", None, False, ("sd",),
           "unpack into a folder, then as {source}: {source_hint}",
           "SageMaker multi-model endpoint archive of lora or a merged format"),
    Format("triton", "_write_triton", None, False, ("sd",),
           "unpack {rel} into a Triton model repository (or upload it as one model of a SageMaker "
           "GPU multi-model endpoint); POST /v2/repository/models/{name}/load",
           "Triton Python-backend model (GPU multi-model endpoints) of lora or a merged format",
           check="_check_triton"),
)

BY_NAME: dict[str, Format] = {f.name: f for f in TABLE}
FORMATS: tuple[str, ...] = tuple(BY_NAME)
GPU_FORMATS: frozenset[str] = frozenset(f.name for f in TABLE if f.needs_gpu)
MERGED_FORMATS: tuple[str, ...] = tuple(n for n in FORMATS if n.startswith("merged-"))
MERGED_DTYPE_HINT = {"merged-fp16": "", "merged-int8": ", dtype=torch.bfloat16"}


def formats_for(family_name: str) -> tuple[str, ...]:
    return tuple(f.name for f in TABLE if family_name in f.families)


def _why_not(name: str, family_name: str) -> str:
    """Why ``family_name`` lacks format ``name``, where the list of what it has is not enough."""
    if name in MERGED_FORMATS and family_name in FLOW:
        return (" (a merged model needs the full-precision base weights to fuse into; a flow-matching base "
                "(FLUX, Z-Image, Qwen-Image) may be quantized for the whole job, base_quantization, so these "
                "families ship the LoRA files, which the family pipeline's load_lora_weights applies over the base)")
    if name in ("onnx", "mme", "triton"):
        return " (its exporter and serving handler are written for StableDiffusionPipeline)"
    return ""


def family_format_problems(names, family) -> list[str]:
    """Formats in ``names`` that ``family`` cannot produce (for the config checks)."""
    return [f"export format {n!r} is not available for {family.name} ({family.title}) models"
            f"{_why_not(n, family.name)}; available: {', '.join(formats_for(family.name))}"
            for n in names if n in BY_NAME and family.name not in BY_NAME[n].families]


def load_hint(name: str, rel: str, *, pipeline: str, mme_source: str = "lora", kohya_name: str = "lora_kohya",
              triton_name: str = "model") -> str:
    """How a user loads the artifact (recorded in the manifest and in the MME archive)."""
    fmt = BY_NAME[name]
    if name == "mme":
        source_rel = "." if mme_source != "kohya" else f"{kohya_name}.safetensors"
        return fmt.load_hint.format(source=mme_source, source_hint=load_hint(
            mme_source, source_rel, pipeline=pipeline, mme_source=mme_source, kohya_name=kohya_name))
    dtype = MERGED_DTYPE_HINT.get(name, ", dtype=torch.float16")
    return fmt.load_hint.format(pipeline=pipeline, rel=rel, dtype=dtype, name=triton_name)
