#!/usr/bin/env python3
"""What the Lambda zip costs at a cold start: importing the handlers, then the first metrics flush.

    .venv/bin/python scripts/bench_lambda_import.py [--runs 9] [--zip build/lambda/fanout.zip | --compiled]

Builds the zip (unless --zip) and unpacks it as Lambda does (its task root), then runs each
measurement in a fresh interpreter that sees only the task root and links to boto3's packages
(what the Lambda Python runtime provides; -I -S: no site-packages; -B: no byte code written,
as the task root is read-only). Prints the median and the range of:
`import fanout.handlers` (boto3 included), and the first `Telemetry.flush()` (which imports
aws-lambda-powertools' metrics and writes one EMF line). A Lambda's task root is read-only, so
without --compiled (scripts/build_lambda_zip.py --compile-with) both compile from source at
every cold start, as here.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("boto3", "botocore", "jmespath", "s3transfer", "dateutil", "six.py", "urllib3")
CODE = """import sys, time, io, contextlib
sys.path[:0] = [sys.argv[1], sys.argv[2]]
t0 = time.perf_counter(); import fanout.handlers; t1 = time.perf_counter()
from fanout.telemetry import Telemetry
m = Telemetry("Fanout", "bench"); m.count("RequestsAccepted")
with contextlib.redirect_stdout(io.StringIO()):
    m.flush()
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9, help="fresh interpreters per figure (default: 9)")
    p.add_argument("--zip", type=Path, default=None, help="an existing Lambda zip (default: build one)")
    p.add_argument("--compiled", action="store_true", help="build the zip with this interpreter's byte code in it")
    a = p.parse_args(argv)
    import boto3

    with tempfile.TemporaryDirectory() as tmp:
        zip_path = a.zip
        if zip_path is None:
            sys.path.insert(0, str(ROOT / "scripts"))
            from build_lambda_zip import build_zip
            zip_path = build_zip(Path(tmp) / "fanout.zip", compile_with=sys.executable if a.compiled else None)
        task = Path(tmp) / "task"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(task)
        runtime = Path(tmp) / "runtime"
        runtime.mkdir()
        site = Path(boto3.__file__).parents[1]
        for name in RUNTIME:
            (runtime / name).symlink_to(site / name)
        size_mb = zip_path.stat().st_size / 1e6
        imports, flushes = [], []
        for _ in range(a.runs):
            out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", CODE, str(task), str(runtime)],
                                 capture_output=True, text=True, check=True).stdout.split()
            imports.append(float(out[0]) * 1000)
            flushes.append(float(out[1]) * 1000)
    for label, values in (("import fanout.handlers", imports), ("first metrics flush (Powertools import + 1 EMF line)", flushes)):
        print(f"{label}: median {statistics.median(values):.0f} ms, range {min(values):.0f}-{max(values):.0f} ms "
              f"({a.runs} cold interpreters, {size_mb:.2f} MB zip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
