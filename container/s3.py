"""Per-task S3 transfers: deliver a task's artifacts to its ``output_uri`` as soon as it ends,
and fetch an ``s3://`` instance_data folder.

The boto3 client comes from outside (tests hand in one pointed at a moto server); the default
one honours ``AWS_ENDPOINT_URL`` and the container's role. ``manifest.json`` is uploaded last:
a consumer that sees it may assume every file it lists is already there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from container.errors import ContainerError

MANIFEST = "manifest.json"


class S3TransferError(ContainerError):
    """An upload or download for one task failed (fails or flags only that task)."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ("bucket", "some/prefix")."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise S3TransferError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise S3TransferError(f"{uri!r} has no bucket name")
    return bucket, prefix.strip("/")


def default_client():
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 8, "mode": "standard"}))


@dataclass
class TaskTransfer:
    client: object

    def upload_folder(self, folder: Path, uri: str) -> list[str]:
        """Upload every file under ``folder`` to ``uri``, ``manifest.json`` last; returns the keys."""
        bucket, prefix = parse_s3_uri(uri)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        # The manifest is the consumer's signal that the rest is complete.
        files.sort(key=lambda p: p.relative_to(folder).as_posix() == MANIFEST)
        keys = []
        for path in files:
            key = "/".join(filter(None, (prefix, path.relative_to(folder).as_posix())))
            try:
                self.client.upload_file(str(path), bucket, key)
            except Exception as exc:  # botocore raises many types; the task records the reason
                raise S3TransferError(f"upload of {path.name} to s3://{bucket}/{key} failed: {exc}") from exc
            keys.append(key)
        return keys

    def download_prefix(self, uri: str, folder: Path) -> int:
        """Download every object under ``uri`` into ``folder``; returns the number of files."""
        bucket, prefix = parse_s3_uri(uri)
        root = folder.resolve()
        count = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix and prefix + "/")
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix):].lstrip("/") if prefix else obj["Key"]
                    target = (root / rel).resolve()
                    if not rel or obj["Key"].endswith("/") or root not in target.parents:
                        continue  # folder markers, and keys like "../x" that would leave the folder
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(bucket, obj["Key"], str(target))
                    count += 1
        except S3TransferError:
            raise
        except Exception as exc:
            raise S3TransferError(f"download of {uri} failed: {exc}") from exc
        if count == 0:
            raise S3TransferError(f"{uri} holds no objects")
        return count
