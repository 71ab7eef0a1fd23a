"""Sample data of the shapes other branches write (COMMON.md's contracts), for the report tests.

Quality (issue 17): ``manifest.json["quality"]`` = {verdict, reasons, scores{dino, clip_i,
clip_t, drift, copying, identity, faces_per_image}, images[{path (relative to the manifest's
folder), prompt, seed, kind}], seconds}, the same object without images in status.json, and
``verdict`` in each summary.json entry; the images live in ``checkpoints/<task>/evaluation/``.
Screening (issue 20): ``status.json["screening"]`` = {mode, kept, dropped, seconds,
images[{file, kept, findings[{check, value, limit, message}]}]}. Slots (issue 21): ``slot``
in each summary entry.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def png(path: Path, size: int = 48, seed: int = 0) -> Path:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randint(100, 255) for _ in range(3)))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                                  fill=tuple(rng.randint(0, 120) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def quality(verdict: str, checkpoint_dir: Path, prompt: str = "a photo of sks toy on the beach") -> dict:
    """A quality object whose evaluation images exist in ``checkpoint_dir/evaluation/``."""
    images = []
    for i, kind in enumerate(("subject", "subject", "drift_base", "drift_lora")):
        name = f"{kind}-{i}.png"
        png(checkpoint_dir / "evaluation" / name, seed=10 + i)
        images.append({"path": f"evaluation/{name}", "kind": kind, "seed": 100 + (i // 2),
                       "prompt": prompt if kind == "subject" else "a photo of a man in a kitchen"})
    reasons = {"passed": [], "needs_review": ["subject DINO 0.41 < 0.55"],
               "failed_quality": ["copies instance photo img3.jpg: 0.97", "subject DINO 0.21 < 0.55"]}[verdict]
    return {"verdict": verdict, "reasons": reasons,
            "scores": {"dino": 0.61, "clip_i": 0.79, "clip_t": 0.29, "drift": 0.04, "copying": 0.83,
                       "identity": None, "faces_per_image": [1, 0, 1, 1]},
            "images": images, "seconds": 3.2}


def screening(kept: int = 3) -> dict:
    return {"mode": "warn", "kept": kept, "dropped": 1, "seconds": 0.4, "images": [
        {"file": "img1.jpg", "kept": True, "findings": []},
        {"file": "img2.jpg", "kept": True, "findings": [
            {"check": "blur", "value": 41.5, "limit": 60.0, "message": "blurry: Laplacian variance 41.5 < 60"}]},
        {"file": "img3.jpg", "kept": False, "findings": [
            {"check": "duplicate", "value": 0.99, "limit": 0.95, "message": "near-duplicate of img1.jpg"}]},
    ]}


def add_quality(checkpoint_dir: Path, verdict: str) -> None:
    """Quality in status.json (without images) and in final/manifest.json (with them)."""
    q = quality(verdict, checkpoint_dir)
    _update(checkpoint_dir / "status.json", quality={k: v for k, v in q.items() if k != "images"})
    manifest = checkpoint_dir / "final" / "manifest.json"
    if manifest.is_file():
        _update(manifest, quality=q)


def add_screening(checkpoint_dir: Path) -> None:
    _update(checkpoint_dir / "status.json", screening=screening())


def add_summary_fields(summary_file: Path, verdicts: dict[str, str]) -> None:
    """``verdict`` and ``slot`` in each task entry, ``slots`` in the summary."""
    summary = json.loads(summary_file.read_text())
    for i, entry in enumerate(summary["tasks"]):
        entry["verdict"] = verdicts.get(entry["task_id"], "not_evaluated")
        entry["slot"] = i % 2
    summary["slots"] = 2
    summary_file.write_text(json.dumps(summary))


def _update(path: Path, **fields) -> None:
    doc = json.loads(path.read_text())
    doc.update(fields)
    path.write_text(json.dumps(doc))
