"""A completed task's deliverables, kept in its checkpoint folder so a restart can return them.

/opt/ml/model is uploaded only when the job ends, and a spot interruption starts a fresh
instance with an empty model folder. The checkpoint prefix is the one thing SageMaker gives
back, so each completed task's model folder is copied to ``checkpoints/<task_id>/final/``
and described by ``final.json`` (file names and sizes), written last. A restart trusts a
completed task only when every file final.json lists is back with its size: SageMaker syncs
file by file, and a kill can land between two of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from container.records import read_json, write_json

FINAL_DIR = "final"
FINAL_INDEX = "final.json"


def keep_final(model_dir: Path, checkpoint_dir: Path) -> Path:
    """Copy ``model_dir`` to ``checkpoint_dir/final`` (hard links where the disk allows)."""
    final = checkpoint_dir / FINAL_DIR
    staging = checkpoint_dir / f".{FINAL_DIR}.tmp"
    index = checkpoint_dir / FINAL_INDEX
    index.unlink(missing_ok=True)
    for stale in (staging, final):
        if stale.exists():
            shutil.rmtree(stale)
    files = {}
    for src in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(model_dir).as_posix()
        _link_or_copy(src, staging / rel)
        files[rel] = src.stat().st_size
    os.replace(staging, final)
    write_json(index, {"files": files})
    return final


def final_is_complete(checkpoint_dir: Path) -> bool:
    index = read_json(checkpoint_dir / FINAL_INDEX)
    if not isinstance(index, dict) or not isinstance(index.get("files"), dict) or not index["files"]:
        return False
    final = checkpoint_dir / FINAL_DIR
    for rel, size in index["files"].items():
        path = final / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def restore_final(checkpoint_dir: Path, model_dir: Path) -> list[str]:
    """Put the kept deliverables back into ``model_dir``; returns the files restored."""
    index = read_json(checkpoint_dir / FINAL_INDEX)
    final = checkpoint_dir / FINAL_DIR
    if model_dir.exists():
        shutil.rmtree(model_dir)
    restored = []
    for rel in sorted(index["files"]):
        _link_or_copy(final / rel, model_dir / rel)
        restored.append(rel)
    return restored


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
