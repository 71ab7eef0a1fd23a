"""Build the Lambda code zip: the `fanout/` package and nothing else (boto3 is in the runtime).

    python scripts/build_lambda_zip.py [--out build/lambda/fanout.zip]

The zip is reproducible (sorted entries, fixed timestamps and modes, no __pycache__), so the
same source gives the same CodeSha256 and `terraform plan` shows no change until fanout/ does.
Prints the path and the base64 SHA-256 that Lambda reports as CodeSha256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "lambda" / "fanout.zip"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)      # the earliest time a zip entry can hold


def package_files(package: Path) -> list[Path]:
    """Every .py file of the package, sorted (caches and other files stay out)."""
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def build_zip(out: Path = DEFAULT_OUT, package: Path = ROOT / "fanout") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in package_files(package):
            info = zipfile.ZipInfo(str(path.relative_to(package.parent)), FIXED_TIME)
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
    args = parser.parse_args(argv)
    path = build_zip(args.out)
    print(f"{path} CodeSha256={code_sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
