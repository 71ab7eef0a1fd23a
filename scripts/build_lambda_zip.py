"""Build the Lambda code zip: the `fanout/` package, plus what requirements/lambda.lock pins
that the Lambda Python runtime lacks (boto3 and its dependencies are in the runtime).

    .venv/bin/python scripts/build_lambda_zip.py [--out build/lambda/fanout.zip]

Bundled: aws-lambda-powertools (its Metrics write the handlers' EMF lines) and typing-extensions
(which Powertools imports), copied from the environment running this script, which must hold
exactly the lock's versions (the project's venv does: tests/test_locks.py).
The zip is reproducible (sorted entries, fixed timestamps and modes, no __pycache__), so the
same source gives the same CodeSha256 and `terraform plan` shows no change until fanout/ does.
Prints the path and the base64 SHA-256 that Lambda reports as CodeSha256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "lambda" / "fanout.zip"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)      # the earliest time a zip entry can hold
LAMBDA_LOCK = ROOT / "requirements" / "lambda.lock"
# in requirements/lambda.lock, not in the Lambda Python runtime (which has boto3, botocore, jmespath,
# s3transfer, python-dateutil, six, urllib3)
BUNDLED = ("aws-lambda-powertools", "typing-extensions")


class ZipError(RuntimeError):
    """The environment cannot give the locked files to bundle."""


def locked_versions(lock: Path = LAMBDA_LOCK) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", lock.read_text(), re.M)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def bundled_files(names: tuple[str, ...] = BUNDLED, lock: Path = LAMBDA_LOCK) -> list[tuple[str, Path]]:
    """(path in the zip, file) of each bundled distribution, as installed here at the locked version."""
    pins, files = locked_versions(lock), []
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ZipError(f"{name} is not installed in {sys.executable}; build the zip with the project's venv "
                           "(make lambda-zip)") from None
        if dist.version != pins.get(name):
            raise ZipError(f"{name} {dist.version} is installed, {LAMBDA_LOCK.name} pins {pins.get(name)}; "
                           "build the zip with the project's venv (make lambda-zip)")
        for entry in dist.files or []:
            path = str(entry)
            # no installer records (they differ by installer, not by content), no byte code
            if (path.startswith("..") or "__pycache__" in entry.parts or path.endswith(".pyc")
                    or entry.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")):
                continue
            files.append((path, Path(dist.locate_file(entry))))
    return sorted(files)


def package_files(package: Path) -> list[Path]:
    """Every .py file of the package, sorted (caches and other files stay out)."""
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def compiled(entries: list[tuple[str, Path]], python: str, work: Path) -> list[tuple[str, Path]]:
    """Byte code of every .py entry for ``python``'s version (unchecked-hash pycs: used without
    comparing source times). A Lambda's task root is read-only, so without them every cold
    start compiles the bundled sources again (Powertools is most of that)."""
    for name, path in entries:
        if name.endswith(".py"):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(path.read_bytes())
    subprocess.run([python, "-m", "compileall", "-q", "-d", "", "--invalidation-mode", "unchecked-hash", str(work)],
                   check=True)
    return sorted((str(pyc.relative_to(work)), pyc) for pyc in work.rglob("*.pyc"))


def build_zip(out: Path = DEFAULT_OUT, package: Path = ROOT / "fanout", compile_with: str | None = None) -> Path:
    """The zip; ``compile_with``: an interpreter of the functions' runtime version (e.g. python3.12
    for the module's default runtime) whose byte code goes in too."""
    entries = [(str(p.relative_to(package.parent)), p) for p in package_files(package)] + bundled_files()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tempfile.TemporaryDirectory() as work:
        if compile_with:
            entries += compiled(entries, compile_with, Path(work))
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for name, path in sorted(entries):
                info = zipfile.ZipInfo(name, FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    tmp.replace(out)             # a half-written zip never sits at the path terraform reads
    return out


def code_sha256(path: Path) -> str:
    """Base64 SHA-256 of the file: Lambda's CodeSha256 and Terraform's filebase64sha256."""
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="zip to write")
    parser.add_argument("--compile-with", default=None, metavar="PYTHON",
                        help="add byte code made by this interpreter, of the functions' runtime version "
                             "(e.g. python3.12): faster cold starts")
    args = parser.parse_args(argv)
    path = build_zip(args.out, compile_with=args.compile_with)
    print(f"{path} CodeSha256={code_sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
