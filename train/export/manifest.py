"""`manifest.json`: what was exported, from what, and how faithful each artifact is.

Schema (version 1), documented for users in docs/exports.md:
    {"schema": 1, "created_at", "base_model": {"path", "weights_sha256", "files"},
     "lora": {"rank", "lora_alpha", "train_text_encoder", "save_dtype"},
     "hyperparameters": {...}, "export_config": {...},
     "formats": {name: {"status": "ok"|"skipped"|"failed", "path", "reason"?, "seconds",
                        "bytes", "load_seconds"?, "drift"?: {...}, "flagged"?: bool,
                        "reload"?: why diffusers could not read it back,
                        "verified": [{"reader", "how"}] read back and passed in this run,
                        "suite_verified": [{"reader", "test"}] what the tests check (readers.py)}},
     "files": [{"path", "bytes", "sha256"}], "timings": {...}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from train.fingerprint import base_model_identity, sha256_file  # noqa: F401 (re-exported)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def file_entries(root: Path, *, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> list[dict]:
    """Every regular file under `root` (sorted, POSIX relative paths) with bytes and sha256."""
    root = Path(root)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        entries.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def make_readable(root: Path) -> None:
    """safetensors writes 0600 files; artifacts are shared (tarred, served, synced): 0644/0755."""
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def write_manifest(model_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Written last and atomically: a manifest present means every file it lists is complete."""
    model_dir = Path(model_dir)
    manifest = {**manifest, "files": file_entries(model_dir)}
    tmp = model_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, model_dir / MANIFEST_NAME)
    return model_dir / MANIFEST_NAME


def verify_manifest(model_dir: Path) -> list[str]:
    """Problems found re-hashing the files a manifest lists (empty when all match)."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    problems = []
    for entry in manifest["files"]:
        path = model_dir / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: size or sha256 differs from the manifest")
    return problems
