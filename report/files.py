"""Where a page's inputs are read from: a local folder or an S3 prefix, through one small interface.

A task's checkpoint folder (``checkpoints/<task>/``) is the same tree in both places (hosts
sync it to S3 as they go), so the page code reads relative paths and never knows which.
``S3Files`` receives its boto3 client from outside and lists a prefix once.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any, Protocol


class Files(Protocol):
    """Read-only view of one folder (relative POSIX paths)."""

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""

    def paths(self, under: str = "") -> list[str]:
        """Every file below ``under`` (relative to this folder, sorted)."""

    def sub(self, rel: str) -> "Files":
        """The folder ``rel`` inside this one."""


def read_json(files: Files, rel: str) -> Any | None:
    """The JSON document at ``rel``, or None when missing or not valid JSON."""
    raw = files.read_bytes(rel)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def read_text(files: Files, rel: str) -> str | None:
    raw = files.read_bytes(rel)
    return None if raw is None else raw.decode("utf-8", "replace")


class LocalFiles:
    def __init__(self, root: Path):
        self.root = Path(root)

    def read_bytes(self, rel: str) -> bytes | None:
        """None also for a path that leads outside the folder ('..', a link out): a page reads
        its own task's files and nothing else."""
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve()):
            return None
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError:
            return None

    def paths(self, under: str = "") -> list[str]:
        top = self.root / under if under else self.root
        if not top.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in top.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def sub(self, rel: str) -> "LocalFiles":
        return LocalFiles(self.root / rel)


class S3Files:
    """An S3 prefix; ``keys`` (every key below it) is listed once and shared with sub-folders."""

    def __init__(self, s3, bucket: str, prefix: str, keys: list[str] | None = None):
        self.s3, self.bucket = s3, bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self._keys = keys

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            found = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                found.extend(item["Key"] for item in page.get("Contents", []))
            self._keys = sorted(found)
        return self._keys

    def read_bytes(self, rel: str) -> bytes | None:
        key = self.prefix + rel
        if self._keys is not None and key not in self._set():
            return None
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def paths(self, under: str = "") -> list[str]:
        start = self.prefix + (under.rstrip("/") + "/" if under else "")
        return [k[len(self.prefix):] for k in self.keys if k.startswith(start) and not k.endswith("/")]

    def sub(self, rel: str) -> "S3Files":
        prefix = self.prefix + rel.strip("/") + "/"
        keys = self.keys  # sorted: the sub-folder's keys are one slice of them
        first = bisect.bisect_left(keys, prefix)
        last = bisect.bisect_left(keys, prefix[:-1] + chr(ord("/") + 1), lo=first)
        return S3Files(self.s3, self.bucket, prefix, keys[first:last])

    def _set(self) -> set[str]:
        if not hasattr(self, "_key_set"):
            self._key_set = set(self._keys or ())
        return self._key_set
