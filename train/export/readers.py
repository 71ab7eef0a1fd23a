"""Which readers an exported file was checked with, recorded per file in ``manifest.json``.

``formats.<name>.verified`` is a measurement of this very file in this run: a reader is listed
only after it read the file back and the check passed (diffusers reloading it and rendering
within the drift threshold of the in-memory LoRA, onnxruntime matching torch, the Triton
archive's own loader serving a request), with the versions that ran and how it was checked.
A file nothing read back here (drift check off, a check over its threshold, a FLUX.1 kohya
copy whose single blocks diffusers' converter cannot split) lists none.

``formats.<name>.suite_verified`` is what the test suite checks for that format on that model
family's layout (``SUITE`` below, with the test that does it); docs/exports.md has the same
table and the supported version ranges. A family without a row (a new one) lists none.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Mapping

CURRENT = "diffusers 0.42.1 + transformers 5.23.0 + peft 0.21.2"
OLD_032 = "diffusers 0.32.2 + transformers 4.54.1 + peft 0.17.1"
OLD_035 = "diffusers 0.35.2 + transformers 4.54.1 + peft 0.17.1"
# ComfyUI's key maps (comfy/lora.py model_lora_keys_unet / model_lora_keys_clip / load_lora,
# comfy/utils.py flux_to_diffusers) as an independent oracle over every key of the file.
COMFY = "ComfyUI key maps (comfy/lora.py, comfy/utils.py flux_to_diffusers): every key, text encoders included"
ORACLE_TEST = "tests/train/test_comfyui_keys.py"
SD_LIKE = ("sd", "sdxl")


def _rows(*pairs: tuple[str, str]) -> tuple[dict[str, str], ...]:
    return tuple({"reader": reader, "test": test} for reader, test in pairs)


# format -> family -> what the suite checks (reader, test).
SUITE: dict[str, dict[str, tuple[dict[str, str], ...]]] = {
    "lora": {
        "sd": _rows((CURRENT, "tests/train/test_export.py"), (OLD_035, "tests/train/test_export_portable.py"),
                    (OLD_032, "tests/train/test_export_portable.py")),
        "sdxl": _rows((CURRENT, "tests/train/test_sdxl.py")),
        "flux": _rows((CURRENT, "tests/train/test_flux_families.py")),
        "flux2-klein": _rows((CURRENT, "tests/train/test_flux_families.py"),
                             (CURRENT + " (Base and distilled)", "tests/train/test_klein_base.py")),
        "z-image": _rows((CURRENT, "tests/train/test_z_image_qwen_image.py")),
        "qwen-image": _rows((CURRENT, "tests/train/test_z_image_qwen_image.py")),
    },
    "kohya": {
        "sd": _rows((CURRENT, "tests/train/test_export.py"), (OLD_035, "tests/train/test_export_portable.py"),
                    (OLD_032, "tests/train/test_export_portable.py"), (COMFY, ORACLE_TEST)),
        "sdxl": _rows((CURRENT, "tests/train/test_sdxl.py"), (COMFY, ORACLE_TEST)),
        "flux": _rows((CURRENT + " (its kohya converter splits FLUX.1's full widths only)",
                       "tests/train/test_flux_families.py"), (COMFY, ORACLE_TEST)),
        "flux2-klein": _rows((CURRENT, "tests/train/test_flux_families.py"), (COMFY, ORACLE_TEST)),
        # diffusers reads these through its own converters (_convert_non_diffusers_{z_image,qwen}_lora_to_diffusers)
        "z-image": _rows((CURRENT, "tests/train/test_z_image_qwen_image.py"),
                         (COMFY, "tests/train/test_z_image_qwen_image.py")),
        "qwen-image": _rows((CURRENT, "tests/train/test_z_image_qwen_image.py"),
                            (COMFY, "tests/train/test_z_image_qwen_image.py")),
    },
    "merged-fp16": {
        "sd": _rows((CURRENT, "tests/train/test_export_formats.py"), (OLD_035, "tests/train/test_export_portable.py"),
                    (OLD_032, "tests/train/test_export_portable.py")),
        "sdxl": _rows((CURRENT, "tests/train/test_sdxl.py")),
    },
    "merged-int8": {family: _rows((CURRENT + " + torchao 0.18.0 (the torchao that wrote the pickle)",
                                   "tests/train/test_export_formats.py" if family == "sd" else "tests/train/test_sdxl.py"))
                    for family in SD_LIKE},
    # bitsandbytes through diffusers needs a GPU: scripts/gpu_check_exports.py checks these there.
    "merged-nf4": {f: _rows((CURRENT + " + bitsandbytes 0.50, CUDA only", "scripts/gpu_check_exports.py"))
                   for f in SD_LIKE},
    "merged-bnb8": {f: _rows((CURRENT + " + bitsandbytes 0.50, CUDA only", "scripts/gpu_check_exports.py"))
                    for f in SD_LIKE},
    "onnx": {"sd": _rows(("onnxruntime 1.32.0 CPUExecutionProvider, opset 18", "tests/train/test_export_onnx.py"),
                         ("optimum-onnx 0.1.0 ORTStableDiffusionPipeline (optimum 2.1.0, transformers 4.57.6, "
                          "diffusers 0.35.2, onnxruntime 1.32.0), in its own reader env", "tests/train/test_export_onnx.py"))},
    "mme": {"sd": _rows(("the packed format's readers, through code/inference.py (model_fn / predict_fn)",
                         "tests/train/test_export_formats.py"))},
    "triton": {"sd": _rows(("tritonserver 2.51 (nvidia-pytriton 0.7.0) Python backend, CPU, serving env " + CURRENT
                            + " + numpy 1.26", "tests/train/test_export_triton.py"))},
}


def suite_verified(name: str, family: str) -> list[dict[str, str]]:
    """What the test suite verifies for format ``name`` on ``family``'s layout."""
    return [dict(row) for row in SUITE.get(name, {}).get(family, ())]


def verified(name: str, entry: Mapping[str, Any], *, threshold: float) -> list[dict[str, str]]:
    """The readers that read this run's file of format ``name`` back and passed (``entry`` is its
    manifest entry after the export checks)."""
    found = []
    drift = entry.get("drift")
    if entry.get("status") == "ok" and drift and not entry.get("flagged"):
        extra = " + torchao " + _version("torchao") if name == "merged-int8" else ""
        found.append({"reader": stack() + extra,
                      "how": (f"loaded as 'load' says and rendered {drift['images']} image(s): mean abs diff "
                              f"{drift['mean_abs_diff']} of 255 from the in-memory LoRA (threshold {threshold})")})
    check = entry.get("onnxruntime_check")
    if entry.get("status") == "ok" and check and not entry.get("flagged"):
        found.append({"reader": f"onnxruntime {_version('onnxruntime')} CPUExecutionProvider",
                      "how": (f"ran every graph at latent shapes {check['shapes']}: max abs diff "
                              f"{max(check['max_abs_diff'].values())} from torch (tolerance {check['tolerance']}); the "
                              "UNet differs from the base")})
    footprint = entry.get("footprint")
    if entry.get("status") == "ok" and footprint and footprint.get("status") != "failed":
        found.append({"reader": f"the archive's 1/inference.py model_fn, {stack()}, in a fresh process",
                      "how": "loaded the unpacked archive and served one 64 px request (its footprint)"})
    return found


def stack() -> str:
    """The diffusers / transformers / peft that ran here."""
    return " + ".join(f"{pkg} {_version(pkg)}" for pkg in ("diffusers", "transformers", "peft"))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"
