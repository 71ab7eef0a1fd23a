"""A SageMaker multi-model endpoint (MME) archive.

An MME serves many models from one S3 prefix: each model is one `<name>.tar.gz` there, which
the endpoint downloads and unpacks into its own folder on first request. So the archive holds
the artifact's files at its root (no leading folder), `serving.json` that says what was
unpacked and how to load it, and `code/inference.py` (`model_fn` / `predict_fn`, the
HuggingFace inference toolkit's convention; source: mme_handler.py):

    lora:    pytorch_lora_weights.safetensors + serving.json (the base model identity: the
             endpoint keeps that base loaded and applies the LoRA per request)
    merged:  a whole diffusers pipeline folder (model_index.json, unet/, ...) + serving.json

The archive is reproducible: sorted members, zero mtimes, root ownership, 0644/0755 modes,
gzip without a timestamp; the same artifact always gives the same sha256.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Sequence

from .manifest import base_model_identity

SERVING_NAME = "serving.json"
HANDLER_NAME = "code/inference.py"  # the HuggingFace inference toolkit's per-model handler path
HANDLER_SOURCE = Path(__file__).with_name("mme_handler.py")


def write_archive(members: Sequence[Path], out_path: Path, *, source: str, base_model_dir: Path,
                  load: str = "") -> Path:
    """Pack `members` (files, or one pipeline folder whose contents go to the root) into `out_path`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, Path]] = [(HANDLER_NAME, HANDLER_SOURCE)]
    for member in members:
        if member.is_dir():
            entries += [(p.relative_to(member).as_posix(), p) for p in member.rglob("*") if p.is_file()]
        else:
            entries.append((member.name, member))
    serving = serving_info(source, load, base_model_dir, sorted(name for name, _ in entries))
    _pack(entries, out_path, extra=(SERVING_NAME, (json.dumps(serving, indent=2) + "\n").encode()))
    return out_path


def serving_info(source: str, load: str, base_model_dir: Path, files: list[str]) -> dict:
    """`serving.json`: what was packed and how to load it (read by mme_handler.model_fn)."""
    return {
        "format": source,
        "load": load,
        "base_model": {k: v for k, v in base_model_identity(base_model_dir).items() if k != "files"},
        "files": files,
    }


def pack_tree(root: Path, out_path: Path, *, compresslevel: int = 9) -> Path:
    """Pack every file under `root` (paths relative to it) reproducibly into `out_path`."""
    root, out_path = Path(root), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _pack([(p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file()], out_path,
          compresslevel=compresslevel)
    return out_path


def _pack(entries: list[tuple[str, Path]], out_path: Path, extra: tuple[str, bytes] | None = None,
          compresslevel: int = 9) -> None:
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in _parent_dirs(n for n, _ in entries):
            tar.addfile(_info(name, dir=True))
        for name, path in sorted(entries):
            info = _info(name, size=path.stat().st_size)
            with open(path, "rb") as f:
                tar.addfile(info, f)
        if extra:
            tar.addfile(_info(extra[0], size=len(extra[1])), io.BytesIO(extra[1]))
    tmp.replace(out_path)


def _info(name: str, *, size: int = 0, dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if dir else tarfile.REGTYPE
    info.mode = 0o755 if dir else 0o644
    info.size = 0 if dir else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _parent_dirs(names) -> list[str]:
    dirs = set()
    for name in names:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)
