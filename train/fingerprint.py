"""Content identity of a base model folder.

One sha256 over the weight files' names and contents: it names the weights wherever they were
copied to and however their mtimes changed, so a SageMaker restart (which downloads the model
channel again) still finds its cached class images, and a manifest says exactly which base a
LoRA was trained on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_CHUNK = 1 << 22

# Hashing a full-size base model reads gigabytes; the warm worker trains and exports many tasks
# against the same base, so the digest is kept per (path, size, mtime) of each weight file.
_base_cache: dict[tuple, dict] = {}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def base_model_identity(base_model_dir: Path) -> dict:
    """``{"path", "weights_sha256", "files": [{"path", "bytes", "sha256"}]}`` of a pipeline folder."""
    base_model_dir = Path(base_model_dir).resolve()
    weights = sorted(p for p in base_model_dir.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in weights)
    if key not in _base_cache:
        digest = hashlib.sha256()
        files = []
        for p in weights:
            rel = p.relative_to(base_model_dir).as_posix()
            file_digest = sha256_file(p)
            digest.update(f"{rel}\0{file_digest}\n".encode())
            files.append({"path": rel, "bytes": p.stat().st_size, "sha256": file_digest})
        _base_cache[key] = {"weights_sha256": digest.hexdigest(), "files": files}
    return {"path": str(base_model_dir), **_base_cache[key]}
