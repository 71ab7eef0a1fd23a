"""evaluate_task: one task's evaluation, after its final previews and before its export.

    settings  <- the task's eval_* settings, its instance prompt and the family
    images    <- the final previews that name the subject (copied) + the rendered set
                 (train/quality/render.py), written to checkpoints/<task>/evaluation/
    scores    <- computed from those PNG files and the instance photos (scores.py)
    verdict   <- the task's quality_gate (gate.py)

The quality object it returns is what status.json, manifest.json and
evaluation/quality.json carry; every ``path`` in it is relative to the folder of the file
that holds it (``relocate``). Without scorer models the verdict is ``not_evaluated`` and
nothing is rendered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from train.quality.gate import judge
from train.quality.scores import Image, compute
from train.quality.settings import resolve

log = logging.getLogger("train.quality")

FOLDER = "evaluation"
QUALITY_FILE = "quality.json"
NO_SCORERS = "no scorer models were given (python -m train --eval-models DIR, or the job's 'eval' channel)"


def not_evaluated(reason: str) -> dict[str, Any]:
    return {"verdict": "not_evaluated", "reasons": [reason]}


def evaluate_task(base, cfg, scorers, *, checkpoint_dir: Path, step: int, task_id: str = "task") -> dict[str, Any]:
    """Render, score and judge the trained LoRA on ``base``; the quality object (paths relative
    to ``checkpoint_dir``). An evaluation that cannot run leaves the LoRA alone: not_evaluated."""
    if scorers is None:
        return not_evaluated(NO_SCORERS)
    t0 = time.monotonic()
    try:
        quality = _evaluate(base, cfg, scorers, Path(checkpoint_dir), step)
    except Exception as exc:  # a scorer's failure must not cost the user a LoRA that trained fine
        log.exception("task %s: evaluation failed", task_id)
        shutil.rmtree(_tmp_folder(Path(checkpoint_dir)), ignore_errors=True)
        return {**not_evaluated(f"evaluation failed: {type(exc).__name__}: {exc}"[:500]),
                "seconds": round(time.monotonic() - t0, 3)}
    quality["seconds"] = round(time.monotonic() - t0, 3)
    write_quality_file(quality, Path(checkpoint_dir))
    print(f"task={task_id} quality: {summary_line(quality)}", flush=True)
    return quality


def _evaluate(base, cfg, scorers, checkpoint_dir: Path, step: int) -> dict[str, Any]:
    from train.data import image_files
    from train.quality.render import render_set
    from train.state import replace_dir

    settings = resolve(cfg, base.family.name, cfg.preview_guidance_scale)
    final, tmp = checkpoint_dir / FOLDER, _tmp_folder(checkpoint_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    images = final_previews(checkpoint_dir / "previews", step, settings, tmp)
    images += render_set(base, settings, tmp, scorers.base_renders)
    replace_dir(tmp, final)   # complete or absent, like previews
    images = [Image(final / im.path.name, im.prompt, im.seed, im.kind) for im in images]
    photos = image_files(Path(cfg.instance_data))
    t1 = time.monotonic()
    with scorers.placed(base.device):
        result = compute(scorers, images, photos, settings)
    verdict, reasons = judge(result.scores, cfg.quality_gate, unmeasured=result.unmeasured,
                             nearest_photo=(result.nearest or {}).get("photo"), instance_photos=result.photos)
    return {
        "verdict": verdict, "reasons": reasons, "scores": result.scores, "unmeasured": result.unmeasured,
        "images": [{"path": _rel(im.path, checkpoint_dir), "prompt": im.prompt, "seed": im.seed, "kind": im.kind}
                   for im in images],
        "copying_nearest": ({**result.nearest, "image": _rel(result.nearest["image"], checkpoint_dir)}
                            if result.nearest else None),
        "instance_photos": result.photos, "settings": settings.to_dict(), "gate": dict(cfg.quality_gate),
        "on_quality_fail": cfg.on_quality_fail, "models": scorers.info,
        "timings": {"render": round(t1 - t0, 3), "score": round(time.monotonic() - t1, 3)},
    }


def _tmp_folder(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / f".tmp-{FOLDER}-{os.getpid()}"


def final_previews(previews_root: Path, step: int, settings, out: Path) -> list[Image]:
    """The final step's previews whose prompt names the subject, copied into ``out``."""
    from train.state import state_name

    folder = previews_root / state_name(step)
    try:
        index = json.loads((folder / "prompts.json").read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    images = []
    for entry in index:
        source = folder / str(entry.get("file", ""))
        if source.is_file() and source.parent == folder and settings.names_subject(str(entry.get("prompt", ""))):
            path = out / f"preview-{len(images)}.png"
            shutil.copyfile(source, path)
            images.append(Image(path, str(entry["prompt"]), int(entry["seed"]), "subject"))
    return images


def relocate(quality: Mapping[str, Any], from_dir: Path, to_dir: Path) -> dict[str, Any]:
    """``quality`` with its paths (relative to ``from_dir``) made relative to ``to_dir``."""
    def move(path: str) -> str:
        return Path(os.path.relpath(Path(from_dir) / path, to_dir)).as_posix()

    out = dict(quality)
    if "images" in out:
        out["images"] = [{**im, "path": move(im["path"])} for im in out["images"]]
    if out.get("copying_nearest"):
        out["copying_nearest"] = {**out["copying_nearest"], "image": move(out["copying_nearest"]["image"])}
    return out


def write_quality_file(quality: Mapping[str, Any], checkpoint_dir: Path) -> Path:
    """evaluation/quality.json: the whole record beside the images (paths relative to it)."""
    from train.state import write_json_atomic

    path = checkpoint_dir / FOLDER / QUALITY_FILE
    write_json_atomic(path, relocate(quality, checkpoint_dir, path.parent))
    return path


def summary_line(quality: Mapping[str, Any]) -> str:
    scores = quality.get("scores") or {}
    shown = " ".join(f"{k}={v:.3f}" for k, v in scores.items() if isinstance(v, float))
    return f"{quality['verdict']} {shown} ({quality.get('seconds', 0):.1f} s)" + (
        f": {'; '.join(quality['reasons'])}" if quality["verdict"] != "passed" else "")


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()
