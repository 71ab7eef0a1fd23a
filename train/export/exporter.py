"""`export_model`: write every requested format into a task's model folder, check each one
against the in-memory LoRA pipeline, and write `manifest.json` last.

Sections, in order: reference renders (in-memory LoRA) -> one writer per format -> load each
artifact back with diffusers and measure drift -> manifest. A format that cannot run here
(bitsandbytes without a GPU) is recorded as skipped with its reason; one that fails is
recorded, the others still run, and an `ExportError` naming it is raised after the manifest
is written, so the task fails loudly but keeps what did export.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from . import drift, formats, lora, manifest, merged, mme, quantized, readers
from .config import ExportConfig
from .errors import ExportError

log = logging.getLogger("train.export")
GPU_REASON = "skipped: needs a GPU (bitsandbytes quantization through diffusers)"
LORA_HINT_DIR = "MODEL_DIR"
MERGED_SOURCE = ".merged-src"  # temporary fp16 merge that quantized formats read when merged-fp16 is not kept


@dataclass
class _Job:
    pipe: Any
    cfg: ExportConfig
    model_dir: Path
    base_model_dir: Path
    train_text_encoder: bool
    rank: int
    lora_alpha: float
    device: torch.device
    dtype: torch.dtype
    family: Any = None                 # train.families.Family of the base model
    written: dict[str, Path] = field(default_factory=dict)

    def merged_source(self) -> Path:
        """A fused fp16 pipeline folder for the quantizers: merged-fp16 itself when exported."""
        if "merged-fp16" in self.written:
            return self.written["merged-fp16"]
        src = self.model_dir / MERGED_SOURCE
        if not src.exists():
            merged.write_merged_pipeline(self.pipe, self.base_model_dir, src, torch.float16)
        return src

    def hint(self, name: str, rel: str) -> str:
        return formats.load_hint(name, rel, pipeline=self.family.pipeline_class, mme_source=self.cfg.mme_source,
                                 kohya_name=self.cfg.kohya_name, triton_name=self.cfg.triton_name)


def export_model(pipe, cfg: ExportConfig, model_dir: Path, *, base_model_dir: Path,
                 train_text_encoder: bool, rank: int, lora_alpha: float,
                 validation_prompts: Sequence[str] = (), seed: int = 0,
                 extra_manifest: Mapping[str, Any] | None = None, family=None,
                 sections: Mapping[str, Any] | None = None) -> dict:
    """Write `cfg.formats` into `model_dir` and return the manifest (also in model_dir/manifest.json).
    `extra_manifest` goes under "hyperparameters"; `sections` are top-level keys (the task's
    quality, its photo screening, ...).

    `pipe` is a pipeline of a supported family (StableDiffusionPipeline, StableDiffusionXLPipeline,
    ...; `family` defaults to the one of its class) over the base modules with the trained adapter
    "default" attached. ``sections`` are top-level manifest entries of the caller's (``quality``).
    A format the family cannot produce is an ExportConfigError, before anything is written. Its modules are left exactly as they were (weights, adapter, train
    or eval mode): the warm worker goes on using them.
    """
    from train.families import family_for_pipeline

    from .errors import ExportConfigError

    started = time.perf_counter()
    family = family or family_for_pipeline(pipe)
    problems = formats.family_format_problems(cfg.formats, family)
    if problems:
        raise ExportConfigError("; ".join(problems))
    model_dir, base_model_dir = Path(model_dir), Path(base_model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # A manifest left from an earlier export must not vouch for files rewritten now.
    (model_dir / manifest.MANIFEST_NAME).unlink(missing_ok=True)
    job = _Job(pipe, cfg, model_dir, base_model_dir, train_text_encoder, rank, lora_alpha,
               device=getattr(pipe, family.denoiser).device, dtype=getattr(pipe, family.denoiser).dtype,
               family=family)
    parts = family.lora_parts(pipe, train_text_encoder=train_text_encoder, rank=rank, lora_alpha=lora_alpha)

    spec = drift.render_spec(validation_prompts, seed, cfg, pipe)
    reference, reference_seconds = None, 0.0
    if cfg.drift_check:
        t0 = time.perf_counter()
        reference = drift.render(pipe, spec)
        reference_seconds = time.perf_counter() - t0

    entries: dict[str, dict] = {}
    for name in cfg.formats:
        entries[name] = _export_format(job, name, parts, spec, reference)
    shutil.rmtree(model_dir / MERGED_SOURCE, ignore_errors=True)
    manifest.make_readable(model_dir)

    result = {
        "schema": manifest.SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": manifest.base_model_identity(base_model_dir),
        "family": family.name,
        "lora": {"rank": rank, "lora_alpha": lora_alpha, "train_text_encoder": train_text_encoder,
                 "save_dtype": cfg.save_dtype},
        "hyperparameters": dict(extra_manifest or {}),
        "export_config": cfg.to_dict(),
        "drift_renders": {"prompts": list(spec.prompts), "seeds": list(spec.seeds), "steps": spec.steps,
                          "resolution": spec.resolution, "device": str(job.device),
                          "dtype": str(job.dtype).removeprefix("torch."), "enabled": cfg.drift_check,
                          "threshold_mean_abs_diff": cfg.drift_threshold},
        "formats": entries,
        "timings": {"reference_render_seconds": round(reference_seconds, 3),
                    "total_seconds": round(time.perf_counter() - started, 3)},
        **dict(sections or {}),
    }
    written = manifest.write_manifest(model_dir, result)
    result = json.loads(written.read_text())
    failed = [f"{n}: {r['reason']}" for n, r in entries.items() if r["status"] == "failed"]
    if failed:
        raise ExportError(f"export failed for {len(failed)} format(s): " + "; ".join(failed))
    return result


def _export_format(job: _Job, name: str, parts: lora.LoraParts, spec, reference) -> dict:
    packs = {"mme": job.cfg.mme_source, "triton": job.cfg.triton_source}.get(name)
    own_gpu = formats.BY_NAME[name].needs_gpu
    needs_gpu = own_gpu or (packs is not None and formats.BY_NAME[packs].needs_gpu)
    if needs_gpu and not torch.cuda.is_available():
        reason = GPU_REASON if own_gpu else f"skipped: packs {packs}, which needs a GPU"
        log.warning("export %s: %s", name, reason)
        return {"status": "skipped", "reason": reason}
    t0 = time.perf_counter()
    try:
        path = WRITERS[name](job, parts)
    except Exception as e:  # one format's failure is recorded; the others still run
        log.error("export %s failed: %s", name, e)
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    job.written[name] = path
    manifest.make_readable(path)
    rel = path.relative_to(job.model_dir).as_posix()
    entry = {"status": "ok", "path": rel, "load": job.hint(name, rel),
             "seconds": round(time.perf_counter() - t0, 3), "bytes": _size(path)}
    if path.is_dir():
        entry["component_bytes"] = {p.name: _size(p) for p in sorted(path.iterdir()) if p.is_dir()}
    if packs:
        entry["packs"] = packs
    unreadable = job.family.unreadable_by_diffusers(job.pipe, name) if reference is not None else None
    if name in CHECKS:  # formats with their own check instead of a diffusers drift render
        entry.update(CHECKS[name](job, path))
    elif unreadable:
        log.warning("export %s: %s", name, unreadable)
        entry["reload"] = unreadable
    elif reference is not None and name in LOADERS:
        entry.update(_measure_drift(job, name, spec, reference))
    # What read this very file back here, and what the suite checks for the format on this family.
    entry["verified"] = readers.verified(name, entry, threshold=job.cfg.drift_threshold)
    entry["suite_verified"] = readers.suite_verified(name, job.family.name)
    log.info("export %s: %s, %.1f MB in %.2f s%s", name, entry["path"], entry["bytes"] / 1e6,
             entry["seconds"], _drift_text(entry))
    return entry


def _measure_drift(job: _Job, name: str, spec, reference) -> dict:
    t0 = time.perf_counter()
    try:
        artifact = LOADERS[name](job, name)
        load_seconds = time.perf_counter() - t0
        images = drift.render(artifact, spec)
        render_seconds = time.perf_counter() - t0 - load_seconds
    except Exception as e:
        log.error("export %s: written, but loading it back with diffusers failed: %s", name, e)
        return {"status": "failed", "reason": f"reload failed: {type(e).__name__}: {e}"}
    finally:
        artifact = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result = drift.compare(reference, images)
    flagged = result["mean_abs_diff"] > job.cfg.drift_threshold
    if flagged:
        log.warning("export %s: drift mean_abs_diff=%.2f over the threshold %.2f (PSNR %s dB)", name,
                    result["mean_abs_diff"], job.cfg.drift_threshold, result["psnr_db"])
    return {"load_seconds": round(load_seconds, 3), "render_seconds": round(render_seconds, 3), "drift": result,
            "flagged": flagged}


def _drift_text(entry: dict) -> str:
    d = entry.get("drift")
    return "" if not d else f"; drift mean_abs={d['mean_abs_diff']:.3f} psnr={d['psnr_db']} dB"


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- writers: (job, lora parts) -> path written, relative to nothing (absolute) -------------

def _write_lora(job: _Job, parts) -> Path:
    return job.family.save_lora(job.pipe, job.model_dir, save_dtype=job.cfg.save_dtype,
                                train_text_encoder=job.train_text_encoder, parts=parts)


def _write_kohya(job: _Job, parts) -> Path:
    return job.family.save_kohya(job.pipe, job.model_dir, job.cfg.kohya_name,
                                 train_text_encoder=job.train_text_encoder, save_dtype=job.cfg.save_dtype)


def _write_merged_fp16(job: _Job, parts) -> Path:
    return merged.write_merged_pipeline(job.pipe, job.base_model_dir, job.model_dir / "merged-fp16", torch.float16)


def _quantized_writer(kind: str) -> Callable[[_Job, Any], Path]:
    def write(job: _Job, parts) -> Path:
        return quantized.write_quantized_pipeline(job.merged_source(), job.model_dir / f"merged-{kind}", kind,
                                                  denoiser=job.family.denoiser)
    return write


def _write_mme(job: _Job, parts) -> Path:
    source = job.cfg.mme_source
    return mme.write_archive([_packed(job, parts, source, "mme_source")],
                             job.model_dir / "mme" / f"{job.cfg.mme_name}.tar.gz", source=source,
                             base_model_dir=job.base_model_dir, load=job.hint(source, _packed_rel(source)))


def _write_onnx(job: _Job, parts) -> Path:
    from . import onnx

    return onnx.write_onnx(job.pipe, job.base_model_dir, job.model_dir / onnx.ONNX_DIR)


def _write_triton(job: _Job, parts) -> Path:
    from . import triton

    source = job.cfg.triton_source
    return triton.write_archive([_packed(job, parts, source, "triton_source")],
                                job.model_dir / "triton" / f"{job.cfg.triton_name}.tar.gz",
                                name=job.cfg.triton_name, source=source, base_model_dir=job.base_model_dir,
                                load=job.hint(source, _packed_rel(source)), execution_env=job.cfg.triton_env)


def _packed(job: _Job, parts, source: str, setting: str) -> Path:
    """What an archive format (mme, triton) packs: the LoRA (written here if not already), or a
    merged format exported earlier in this run, so that its drift is known."""
    if source == "lora":
        return job.written.get("lora") or _write_lora(job, parts)
    if source not in job.cfg.formats:
        raise ExportError(f"{setting}={source!r} but {source} is not among the exported formats "
                          f"({', '.join(job.cfg.formats)}): add it to formats")
    if source not in job.written:
        raise ExportError(f"{setting}={source!r} was not written (see its entry in the manifest)")
    return job.written[source]


def _packed_rel(source: str) -> str:
    return LORA_HINT_DIR if source == "lora" else "."


def _check_onnx(job: _Job, path: Path) -> dict:
    from . import onnx

    # onnxruntime runs on the CPU in fp32: compare with the base there too, whatever the job's device.
    base = job.family.load_pipeline(job.base_model_dir, dtype=torch.float32, device="cpu")
    try:
        result = onnx.verify(job.pipe, base, path)
    except Exception as e:
        log.error("export onnx: written, but onnxruntime could not run it: %s", e)
        return {"status": "failed", "reason": f"onnxruntime check failed: {type(e).__name__}: {e}"}
    finally:
        base = None
        gc.collect()
    flagged = not (result["within_tolerance"] and result["differs_from_base"])
    if flagged:
        log.warning("export onnx: onnxruntime vs torch %s (tolerance %s), vs base %s", result["max_abs_diff"],
                    result["tolerance"], result["unet_max_abs_diff_vs_base"])
    return {"onnxruntime_check": result, "flagged": flagged}


def _check_triton(job: _Job, path: Path) -> dict:
    from . import triton

    if not job.cfg.triton_footprint:
        return {}
    try:
        return {"footprint": triton.measure_footprint(path)}
    except Exception as e:  # the archive is written; only the measurement is missing
        log.warning("export triton: footprint not measured: %s", e)
        return {"footprint": {"status": "failed", "reason": f"{type(e).__name__}: {e}"}}


_write_merged_int8 = _quantized_writer("int8")
_write_merged_nf4 = _quantized_writer("nf4")
_write_merged_bnb8 = _quantized_writer("bnb8")


# --- loaders: how a user loads each artifact (used for the drift renders) -------------------

def _load_base(job: _Job):
    return job.family.load_pipeline(job.base_model_dir, dtype=job.dtype, device=job.device)


def _load_lora(job: _Job, name: str = "lora"):
    pipe = _load_base(job)
    pipe.load_lora_weights(job.model_dir)
    return pipe


def _load_kohya(job: _Job, name: str = "kohya"):
    pipe = _load_base(job)
    pipe.load_lora_weights(job.model_dir, weight_name=f"{job.cfg.kohya_name}.safetensors")
    return pipe


def _load_merged(job: _Job, name: str):
    return quantized.load_pipeline(job.model_dir / name, device=job.device, dtype=job.dtype, family=job.family)


# Writers and loaders by format, as the table in formats.py names them.
WRITERS: dict[str, Callable[[_Job, Any], Path]] = {f.name: globals()[f.writer] for f in formats.TABLE}
LOADERS: dict[str, Callable[[_Job, str], Any]] = {f.name: globals()[f.loader] for f in formats.TABLE if f.loader}
# Formats checked their own way instead of a diffusers drift render (onnxruntime, the Triton footprint).
CHECKS: dict[str, Callable[[_Job, Path], dict]] = {f.name: globals()[f.check] for f in formats.TABLE if f.check}
