"""Where a request's model comes from, and getting its files onto local disk.

A request names a model three ways (docs/serving.md):
- ``s3://bucket/models/<user>/<request>/`` (a task's model folder, or its LoRA file): allowed
  only under the ``models_uri`` prefixes; the LoRA file and ``manifest.json`` are fetched,
  nothing else in the folder (a merged export there may be gigabytes).
- a local folder (or file) under ``models_root``; any path that resolves outside it is refused.
- ``<user_id>/<model_id>``, the key of the serverless path's models table (``models_table``):
  its item names the adapter URI (and family and base), which is then fetched as above.

Nothing here imports torch. The S3 and DynamoDB clients are passed in.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from serve.cache import DiskCache
from serve.errors import TooLarge, UnknownModel, Unprocessable

LORA_FILE = "pytorch_lora_weights.safetensors"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MODEL_ID = re.compile(r"^([^/\s]{1,256})/([^/\s]{1,256})$")
S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: ``kind`` "local" or "s3", the folder and the LoRA file's name in it."""

    name: str                     # as the request said it
    kind: str
    folder: str                   # local path, or s3://bucket/prefix/ (ending in "/")
    weight_name: str = LORA_FILE
    family: str | None = None     # what the models table says, when it was the source

    @property
    def key(self) -> str:
        """The cache key: one adapter file wherever it is named from."""
        return f"{self.folder}{'' if self.folder.endswith('/') else '/'}{self.weight_name}"


class Resolver:
    """Request's ``model`` -> ModelRef, within the places this server may read."""

    def __init__(self, models_root: str = "", prefixes: tuple[str, ...] = (), table=None):
        self.root = Path(models_root).resolve() if models_root else None
        self.prefixes = tuple(p if p.endswith("/") else p + "/" for p in prefixes)
        self.table = table

    def resolve(self, name: str) -> ModelRef:
        if name.startswith("s3://"):
            return self._s3(name, name)
        if self.table is not None and MODEL_ID.match(name) and not name.startswith("."):
            return self._from_table(name)
        return self._local(name)

    def _s3(self, name: str, uri: str, family: str | None = None) -> ModelRef:
        match = S3_URI.match(uri)
        if not match or ".." in uri.split("/"):
            raise Unprocessable(f"model: {uri!r} is not an s3://BUCKET/KEY URI")
        folder, weight = (uri.rsplit("/", 1)[0] + "/", uri.rsplit("/", 1)[1]) if uri.endswith(".safetensors") \
            else (uri if uri.endswith("/") else uri + "/", LORA_FILE)
        if not any(folder.startswith(p) for p in self.prefixes):
            allowed = ", ".join(self.prefixes) or "none (the server was started without --models-uri)"
            raise Unprocessable(f"model: {uri} is outside the S3 prefixes this server may read ({allowed})")
        return ModelRef(name, "s3", folder, weight, family)

    def _local(self, name: str) -> ModelRef:
        if self.root is None:
            raise Unprocessable(f"model: {name!r} is not an s3:// URI"
                                + (" or a <user_id>/<model_id> of the models table" if self.table is not None else "")
                                + ", and this server reads no local folders (started without --models-root)")
        path = (self.root / name).resolve()
        if path != self.root and self.root not in path.parents:
            raise Unprocessable(f"model: {name!r} resolves outside the models folder {self.root}")
        if path.is_file() and path.suffix == ".safetensors":
            return ModelRef(name, "local", str(path.parent), path.name)
        if not (path / LORA_FILE).is_file():
            raise UnknownModel(f"model: no {LORA_FILE} in {path}" if path.is_dir() else f"model: {path} does not exist")
        return ModelRef(name, "local", str(path), LORA_FILE)

    def _from_table(self, name: str) -> ModelRef:
        user_id, model_id = MODEL_ID.match(name).groups()
        item = self.table.get(user_id, model_id)
        if item is None:
            raise UnknownModel(f"model: no model {model_id!r} of user {user_id!r} in the models table")
        uri = item.get("adapter_uri") or ((item.get("artifact_uri") or "").rstrip("/") + "/" + LORA_FILE)
        if not uri.startswith("s3://"):
            raise UnknownModel(f"model: the models table item {name} names no adapter (adapter_uri / artifact_uri)")
        return self._s3(name, uri, item.get("family"))


class Fetcher:
    """Puts a model's LoRA file (and its manifest, when there is one) into a local folder:
    the disk cache for S3 models, the folder itself for local ones. One download per model at
    a time, however many requests ask for it at once."""

    def __init__(self, disk: DiskCache, max_bytes: int, s3=None):
        self.disk, self.max_bytes, self.s3 = disk, max_bytes, s3
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def local_folder(self, ref: ModelRef) -> tuple[Path, str]:
        """(folder holding ``ref.weight_name`` and maybe manifest.json, "local"|"disk"|"s3")."""
        if ref.kind == "local":
            size = (Path(ref.folder) / ref.weight_name).stat().st_size
            self._check_size(ref, size)
            return Path(ref.folder), "local"
        entry = _entry_name(ref.key)
        with self._lock_for(entry):
            found = self.disk.get(entry)
            if found is not None:
                return found, "disk"
            return self.disk.put(entry, lambda tmp: self._download(ref, tmp)), "s3"

    def _lock_for(self, entry: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(entry, threading.Lock())

    def _check_size(self, ref: ModelRef, size: int) -> None:
        if size > self.max_bytes:
            raise TooLarge(f"model: {ref.key} is {size / 2**20:.1f} MB, over this server's limit of "
                           f"{self.max_bytes / 2**20:.1f} MB (--max-adapter-mb)")

    def _download(self, ref: ModelRef, into: Path) -> None:
        bucket, prefix = S3_URI.match(ref.folder).groups()
        key = prefix + ref.weight_name
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise UnknownModel(f"model: s3://{bucket}/{key} does not exist") from None
            raise
        self._check_size(ref, head["ContentLength"])
        self.s3.download_file(bucket, key, str(into / ref.weight_name))
        manifest = self._manifest(bucket, prefix + MANIFEST)
        if manifest is not None:
            (into / MANIFEST).write_bytes(manifest)

    def _manifest(self, bucket: str, key: str) -> bytes | None:
        try:
            found = self.s3.get_object(Bucket=bucket, Key=key)
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        with found["Body"] as body:
            if found.get("ContentLength", 0) > MAX_MANIFEST_BYTES:
                return None  # not ours: the family check then reads the LoRA's own keys
            return body.read()


def _entry_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def download_base(s3, uri: str, into: Path) -> Path:
    """An s3:// base pipeline prefix copied to ``into`` once (a `.complete` marker written last)."""
    uri = uri if uri.endswith("/") else uri + "/"
    match = S3_URI.match(uri)
    if not match:
        raise Unprocessable(f"base_model: {uri!r} is not s3://BUCKET/PREFIX/")
    bucket, prefix = match.groups()
    target = into / _entry_name(uri)
    if (target / ".complete").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".base-", dir=into))
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for obj in (o for page in pages for o in page.get("Contents", [])):
        rel = obj["Key"][len(prefix):]
        if not rel or rel.endswith("/") or ".." in rel.split("/"):
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(tmp / rel))
    if not (tmp / "model_index.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UnknownModel(f"base_model: no model_index.json under {uri}")
    (tmp / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
