#!/usr/bin/env python3
"""The end of `make demo`: the inference server on the demo's base, one image for each of two
of the demo's users over HTTP, then stopped.

    python scripts/serve_demo.py --base build/demo/inputs/model --models build/demo/job/s3/model \
        --users ana-toy,ben-toy [--out build/demo/serve]

Starts `python -m serve` (scripts/serve_process.py) with the job's model folders as its
models root, posts one /invocations request per user with the `requests` library, writes
each image next to the answer's cache and timing figures, and stops the server.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

from serve_process import ServeProcess  # a sibling: scripts/ is sys.path[0]


def run(base: Path, models: Path, users: list[str], out: Path, prompt: str = "a photo of sks toy") -> list[str]:
    """Render one image per user through the server; returns problems (empty when all went well)."""
    import requests

    out.mkdir(parents=True, exist_ok=True)
    problems = []
    t0 = time.monotonic()
    print(f"serving: starting `python -m serve` on {base} ...", flush=True)
    with ServeProcess(base, "--models-root", models, "--cache-size", 4, "--max-rank", 16, "--cache-dir",
                      out / "cache", log_path=out / "serve.log") as server:
        print(f"serving: ready on {server.url} after {time.monotonic() - t0:.1f} s (GET /ping 200)")
        for user in users:
            answer = requests.post(server.url + "/invocations", timeout=300, json={
                "model": user, "prompt": prompt, "num_inference_steps": 4, "seed": 0})
            if answer.status_code != 200:
                problems.append(f"serving {user}: HTTP {answer.status_code} {answer.text[:300]}")
                continue
            body = answer.json()
            path = out / f"{user}.png"
            path.write_bytes(base64.b64decode(body["images"][0]))
            print(f"serving: {user}: {body['parameters']['width']}x{body['parameters']['height']} in "
                  f"{body['seconds']:.2f} s, cache {body['cache']} (adapter from {body['adapter']['source']}, "
                  f"rank {body['adapter']['rank']}) -> {path}")
        stats = server.stats()
    print(f"serving: stopped; {stats['counts'].get('ok', 0)} images, {stats['swaps']} adapter swaps, "
          f"one {stats['family']} base in memory")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the base pipeline folder")
    p.add_argument("--models", type=Path, required=True, help="folder of the users' model folders")
    p.add_argument("--users", required=True, help="comma-separated model folder names")
    p.add_argument("--out", type=Path, default=Path("build/demo/serve"), help="where the images go")
    a = p.parse_args(argv)
    problems = run(a.base, a.models, [u for u in a.users.split(",") if u], a.out)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
