"""What a task's page shows, read from its checkpoint folder (local or S3) into plain values.

The folder is the one a task writes as it runs: ``status.json`` (state, error, timings,
settings, quality, screening), ``metrics.jsonl`` (the loss curve), ``previews/step-N/``
(images + ``prompts.json``), ``log-tail.txt`` and, once the task completed, ``final/`` (its
model folder with ``manifest.json``). Anything missing leaves its section out; nothing here
raises on a half-written or older folder.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from report.files import Files, read_json, read_text
from report.images import TASK_THUMB, Thumb, thumbnail
from train.metrics import parse_metrics
from train.quality.gate import SCORES
from train.timings import PHASES

MAX_STEP_COLUMNS = 12
LOG_LINES_SHOWN = 60
_STEP_DIR = re.compile(r"^previews/step-(\d+)/prompts\.json$")


@dataclass
class PreviewGrid:
    prompts: list[str]
    steps: list[int]
    cells: list[list[Thumb | None]]  # one row per prompt, one cell per step
    hidden_steps: int = 0            # preview steps left out to keep the grid readable


@dataclass
class ExportRow:
    name: str
    status: str
    path: str | None
    bytes: int | None
    load: str | None
    verified: list[tuple[str, str]]  # (reader, how) checked for this very file
    suite: list[str]                 # readers the test suite verifies for this format
    reload: str | None               # why diffusers could not read this file back
    reason: str | None               # why the format was skipped or failed
    drift: dict | None
    flagged: bool                    # drift over the export's threshold


@dataclass
class Quality:
    verdict: str | None
    reasons: list[str]
    scores: list[tuple[str, Any]]
    faces_per_image: list[Any]
    seconds: float | None
    subject: list[tuple[Thumb | None, str]]             # (image, prompt)
    drift: list[tuple[Thumb | None, Thumb | None, str]]  # (without LoRA, with LoRA, prompt)


@dataclass
class Screening:
    mode: str
    kept: Any
    dropped: Any
    seconds: float | None
    findings: list[tuple[str, bool, str, Any, Any, str]]  # photo, kept, check, value, limit, message


@dataclass
class TaskView:
    task_id: str
    status: dict
    state: str
    error: str | None
    verdict: str | None
    metrics: list[dict]
    loss_chart: str | None
    previews: PreviewGrid | None
    timings: list[tuple[str, float, float]]  # phase, seconds, share of the total
    settings: list[tuple[str, str, str]]
    exports: list[ExportRow]
    quality: Quality | None
    screening: Screening | None
    log_lines: list[str] = field(default_factory=list)


def read_task(files: Files, *, task_id: str | None = None, model: Files | None = None,
              model_href: str | None = "final/", links: bool = True, chart: bool = True) -> TaskView:
    """Everything the task page shows. ``model`` is the task's model folder (``final/`` by
    default); hrefs to full images are relative to the checkpoint folder (off with ``links``)."""
    status = read_json(files, "status.json")
    status = status if isinstance(status, dict) else {}
    model = model if model is not None else files.sub("final")
    manifest = read_json(model, "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    metrics = parse_metrics(read_text(files, "metrics.jsonl") or "")
    previews = preview_grid(files, links)
    quality = read_quality(status, manifest, files, model, model_href if links else None)
    log = (read_text(files, "log-tail.txt") or "").splitlines()
    loss_chart = None
    if chart:
        from report.charts import loss_chart as draw

        loss_chart = draw(metrics, salt=f"loss-{task_id or status.get('task_id', '')}")
    return TaskView(
        task_id=str(task_id or status.get("task_id") or "task"), status=status,
        state=str(status.get("state") or "unknown"), error=status.get("error"),
        verdict=(quality.verdict if quality else None) or status.get("verdict"),
        metrics=metrics, loss_chart=loss_chart, previews=previews,
        timings=timings(status.get("timings")),
        settings=settings(status.get("settings"), status.get("recipe")), exports=exports(manifest), quality=quality,
        screening=read_screening(_object(status.get("screening")) or _object(manifest.get("screening"))),
        log_lines=log[-LOG_LINES_SHOWN:],
    )


def preview_steps(files: Files) -> list[tuple[int, str]]:
    """(step, path of its prompts.json) of every preview step in the folder, in step order."""
    return sorted((int(m.group(1)), p) for p in files.paths("previews") if (m := _STEP_DIR.match(p)))


def preview_grid(files: Files, links: bool = True, size: int = TASK_THUMB) -> PreviewGrid | None:
    """Prompt x step: the first image of each prompt at each preview step (at most 12 steps)."""
    found = preview_steps(files)
    if not found:
        return None
    chosen = _spread(found, MAX_STEP_COLUMNS)
    prompts: list[str] = []
    firsts: dict[tuple[int, str], str] = {}
    for step, index_path in chosen:
        index = read_json(files, index_path)
        for image in (index or {}).get("images", []) if isinstance(index, dict) else []:
            prompt = str(image.get("prompt", ""))
            if prompt not in prompts:
                prompts.append(prompt)
            name = posixpath.basename(str(image.get("file")))  # an index names files beside it, nothing else
            firsts.setdefault((step, prompt), posixpath.join(posixpath.dirname(index_path), name))
    cells = []
    for prompt in prompts:
        row = []
        for step, _ in chosen:
            rel = firsts.get((step, prompt))
            row.append(thumbnail(files.read_bytes(rel), size, href=rel if links else None,
                                 alt=f"step {step}: {prompt}") if rel else None)
        cells.append(row)
    return PreviewGrid(prompts=prompts, steps=[s for s, _ in chosen], cells=cells, hidden_steps=len(found) - len(chosen))


def _spread(items: list, most: int) -> list:
    """At most ``most`` items, evenly spread, always keeping the first and the last."""
    if len(items) <= most:
        return items
    picks = sorted({round(i * (len(items) - 1) / (most - 1)) for i in range(most)})
    return [items[i] for i in picks]


def timings(raw: Any) -> list[tuple[str, float, float]]:
    if not isinstance(raw, dict):
        return []
    values = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0}
    total = sum(values.values()) or 1.0
    order = [p for p in PHASES if p in values] + sorted(set(values) - set(PHASES))
    return [(p, values[p], values[p] / total) for p in order]


def settings(raw: Any, recipe: Any = None) -> list[tuple[str, str, str]]:
    """(name, value, where the value comes from: the family's recipe and its source, or "")."""
    if not isinstance(raw, dict):
        return []
    recipe = recipe if isinstance(recipe, dict) else {}
    given = recipe.get("from_recipe") if isinstance(recipe.get("from_recipe"), dict) else {}
    sources = recipe.get("sources") if isinstance(recipe.get("sources"), dict) else {}
    label = "/".join(str(p) for p in (recipe.get("family"), recipe.get("variant")) if p)
    return [(str(k), v if isinstance(v, str) else json.dumps(v),
             f"{label} recipe: {sources.get(k, '')}".rstrip(": ") if k in given else "")
            for k, v in sorted(raw.items())]


def exports(manifest: dict) -> list[ExportRow]:
    rows = []
    formats = manifest.get("formats")
    for name, entry in (formats.items() if isinstance(formats, dict) else ()):
        if not isinstance(entry, dict):
            continue
        rows.append(ExportRow(
            name=str(name), status=str(entry.get("status", "?")), path=entry.get("path"),
            bytes=entry.get("bytes") if isinstance(entry.get("bytes"), (int, float)) else None,
            load=entry.get("load"), verified=verified_for_file(entry), suite=suite_readers(entry),
            reload=entry.get("reload") if isinstance(entry.get("reload"), str) else None,
            reason=entry.get("reason"), drift=_object(entry.get("drift")), flagged=bool(entry.get("flagged")),
        ))
    return rows


def verified_for_file(entry: dict) -> list[tuple[str, str]]:
    """Readers checked for this very file: ``verified`` (issue 19's field) when the manifest has
    it; an older manifest only says so through a measured drift (diffusers loaded the file back
    and rendered it in this run). Its ``verified_readers`` is what the suite verifies for the
    format, never shown as checked for this file. A file whose ``reload`` says diffusers could
    not read it never shows a diffusers reader as verified, whatever is listed.
    """
    if entry.get("status") != "ok":
        return []
    if "verified" in entry:
        rows = []
        for item in entry.get("verified") or ():
            if isinstance(item, dict) and item.get("reader"):
                rows.append((str(item["reader"]), str(item.get("how") or "")))
            elif isinstance(item, str):
                rows.append((item, ""))
    else:
        drift = entry.get("drift")
        rows = [("diffusers, as installed in this run",
                 f"loaded back and rendered: mean pixel difference {drift.get('mean_abs_diff')}/255 "
                 f"to the trained model")] if isinstance(drift, dict) else []
    return _without_diffusers(rows, entry, key=lambda row: row[0])


def suite_readers(entry: dict) -> list[str]:
    """What the test suite verifies for this format and family (``suite_verified``, or an older
    manifest's ``verified_readers``)."""
    listed = entry.get("suite_verified") if "suite_verified" in entry else entry.get("verified_readers")
    names = [str(item.get("reader")) if isinstance(item, dict) else str(item) for item in listed or ()]
    return _without_diffusers(names, entry, key=str)


def _without_diffusers(rows: list, entry: dict, key) -> list:
    if not entry.get("reload"):
        return rows
    return [row for row in rows if "diffusers" not in key(row).lower()]


def read_quality(status: dict, manifest: dict, files: Files, model: Files, model_href: str | None) -> Quality | None:
    raw = _object(manifest.get("quality")) or _object(status.get("quality"))
    if raw is None:
        return None
    scores = _object(raw.get("scores")) or {}
    listed = [(k, scores[k]) for k in SCORES if k in scores]
    listed += [(k, v) for k, v in sorted(scores.items()) if k not in SCORES and k != "faces_per_image"]
    subject, drift_pairs = [], {}
    for image in raw.get("images") or ():
        if not isinstance(image, dict) or not isinstance(image.get("path"), str):
            continue
        thumb = _evaluation_image(image, files, model, model_href)
        kind, prompt = image.get("kind"), str(image.get("prompt", ""))
        if kind in ("drift_base", "drift_lora"):
            pair = drift_pairs.setdefault((prompt, image.get("seed")), [None, None])
            pair[0 if kind == "drift_base" else 1] = thumb
        else:
            subject.append((thumb, prompt))
    reasons = raw.get("reasons") if isinstance(raw.get("reasons"), list) else []
    faces = scores.get("faces_per_image")
    return Quality(verdict=raw.get("verdict"), reasons=[str(r) for r in reasons], scores=listed,
                   faces_per_image=faces if isinstance(faces, list) else [],
                   seconds=raw.get("seconds") if isinstance(raw.get("seconds"), (int, float)) else None,
                   subject=subject, drift=[(a, b, p) for (p, _), (a, b) in drift_pairs.items()])


def _evaluation_image(image: dict, files: Files, model: Files, model_href: str | None) -> Thumb | None:
    """Paths are relative to the manifest's folder; the images also live in ``evaluation/``."""
    rel = posixpath.normpath(image["path"]).lstrip("/")  # (LocalFiles refuses a path out of its folder)
    alt = f"{image.get('kind', 'evaluation')}: {image.get('prompt', '')}"
    candidates = [(model, rel, (model_href + rel) if model_href is not None else None),
                  (files, rel, rel if model_href is not None else None),
                  (files, "evaluation/" + posixpath.basename(rel),
                   "evaluation/" + posixpath.basename(rel) if model_href is not None else None)]
    for where, path, href in candidates:
        raw = where.read_bytes(path)
        if raw is not None:
            return thumbnail(raw, TASK_THUMB, href=href, alt=alt)
    return None


def read_screening(raw: dict | None) -> Screening | None:
    """Issue 20's ``screening`` object: every finding of every photo, one row each."""
    if raw is None:
        return None
    rows = []
    for image in raw.get("images") or ():
        if not isinstance(image, dict):
            continue
        for f in image.get("findings") or ():
            if isinstance(f, dict):
                rows.append((str(image.get("file", "")), bool(image.get("kept")), str(f.get("check", "")),
                             f.get("value"), f.get("limit"), str(f.get("message", ""))))
    seconds = raw.get("seconds")
    return Screening(mode=str(raw.get("mode", "")), kept=raw.get("kept"), dropped=raw.get("dropped"),
                     seconds=float(seconds) if isinstance(seconds, (int, float)) else None, findings=rows)


def _object(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None
