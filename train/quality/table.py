"""One line per task with its scores and verdict, read from the tasks' status.json (no torch).

    from train.quality.table import quality_table
    print(quality_table(Path("W/s3/checkpoints")))      # fanout local's merged checkpoints

``make demo`` prints it after the job; it reads only files, so it works on any synced
checkpoint prefix (``aws s3 sync s3://.../checkpoints/ ck/`` first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from train.quality.gate import SCORES as COLUMNS


def quality_rows(checkpoints_root: Path, task_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """{task_id, state, verdict, scores, reasons, evaluation} per task folder with a status.json."""
    root = Path(checkpoints_root)
    ids = sorted(task_ids) if task_ids is not None else sorted(
        p.name for p in root.iterdir() if (p / "status.json").is_file() and not p.name.startswith("_"))
    rows = []
    for task_id in ids:
        try:
            status = json.loads((root / task_id / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        quality = status.get("quality") if isinstance(status.get("quality"), dict) else {}
        rows.append({"task_id": task_id, "state": status.get("state", "missing"),
                     "verdict": quality.get("verdict", "not_evaluated"), "scores": quality.get("scores") or {},
                     "reasons": quality.get("reasons") or [], "seconds": quality.get("seconds"),
                     "evaluation": root / task_id / "evaluation"})
    return rows


def quality_table(checkpoints_root: Path, task_ids: Iterable[str] | None = None) -> str:
    rows = quality_rows(checkpoints_root, task_ids)
    if not rows:
        return "no task status found under " + str(checkpoints_root)
    width = max(len(r["task_id"]) for r in rows + [{"task_id": "task"}])
    lines = [f"{'task':{width}}  {'verdict':14} " + " ".join(f"{c:>8}" for c in COLUMNS) + f" {'eval s':>6}  reasons"]
    for r in rows:
        cells = " ".join(f"{_number(r['scores'].get(c)):>8}" for c in COLUMNS)
        seconds = f"{r['seconds']:.1f}" if isinstance(r["seconds"], (int, float)) else "-"
        verdict = r["verdict"] if r["state"] == "completed" else f"({r['state']})"
        lines.append(f"{r['task_id']:{width}}  {verdict:14} {cells} {seconds:>6}  {'; '.join(r['reasons'])[:100]}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
