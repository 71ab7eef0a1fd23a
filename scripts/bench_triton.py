#!/usr/bin/env python3
"""Memory and load time per loaded user model on a real tritonserver, for each archive source.

    python scripts/bench_triton.py [--arch tiny|sd15] [--sources lora,merged-fp16,merged-int8] [--json FILE]

Builds a base (scripts/make_tiny_model.py; `--arch sd15` has SD 1.5's shapes, so sizes and
memory are the real model's), attaches a LoRA, exports one `triton` archive per source, then
starts the cached serving env's tritonserver (scripts/reader_envs.py) and, one model at a time
(as an endpoint loads a user's model on first request): loads it through the repository API,
reads its model process's RSS / PSS, runs one request, unloads it. Prints one row per source
with the manifest's own footprint figure beside it. On CUDA the stub runs on the GPU if the
serving env's torch has CUDA (the cached env has the CPU wheel; see gpu_check_exports.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def export_archives(work: Path, arch: str, sources: list[str], env: Path,
                    device: str = "cpu") -> tuple[Path, dict[str, Path], dict]:
    import make_tiny_model  # siblings: scripts/ is sys.path[0]
    import torch
    from gpu_check_exports import lora_pipeline

    from train.export import ExportConfig, export_model

    torch.set_num_threads(1)
    base = make_tiny_model.build_pipeline(work / f"base-{arch}", arch=arch)
    pipe = lora_pipeline(base, 4, 8.0, 0.02, device)
    archives, entries = {}, {}
    for source in sources:
        formats = "lora,triton" if source == "lora" else f"lora,{source},triton"
        out = work / source
        manifest = export_model(pipe, ExportConfig(formats=formats, triton_source=source, triton_env=str(env),
                                                   drift_check=False), out, base_model_dir=base,
                                train_text_encoder=False, rank=4, lora_alpha=8.0)
        entries[source] = manifest["formats"]["triton"]
        archives[source] = out / entries[source]["path"]
    return base, archives, entries


def measure(archives: dict[str, Path], env: Path, work: Path, size: int, steps: int,
            keep_images: bool = False) -> dict[str, dict]:
    import triton_server

    from train.export.triton import unpack

    repository = work / "repository"
    repository.mkdir(exist_ok=True)
    for source, archive in archives.items():
        unpack(archive, repository, source)
    results = {}
    with triton_server.TritonServer(repository, env=env, log_path=work / "triton.log") as server:
        for source in archives:
            load_s = server.load(source)
            pid = server.model_processes()[source]
            loaded = triton_server.memory_of(pid)
            t0 = time.perf_counter()
            png = server.infer(source, "a photo of sks dog", seed=0, steps=steps, size=(size, size))
            infer_s = time.perf_counter() - t0
            # After the first request: mmap-loaded weights count only once they are touched.
            results[source] = {"load_seconds": round(load_s, 2), **triton_server.memory_of(pid),
                               "rss_after_load_bytes": loaded["rss_bytes"], **gpu_memory_of(server),
                               "infer_seconds": round(infer_s, 2), "png_bytes": len(png)}
            if keep_images:
                results[source]["png"] = png
            server.unload(source)
    return results


def reuse_archives(work: Path, sources: list[str]) -> tuple[dict[str, Path], dict]:
    from train.export.triton import measure_footprint

    archives, entries = {}, {}
    for source in sources:
        entries[source] = json.loads((work / source / "manifest.json").read_text())["formats"]["triton"]
        archives[source] = work / source / entries[source]["path"]
        entries[source]["footprint"] = measure_footprint(archives[source])
    return archives, entries


def gpu_memory_of(server) -> dict:
    """GPU memory each loaded model's process holds (nvidia-smi), when there is a GPU."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return {}
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    used = {int(pid): int(mb) * 2**20 for pid, mb in (line.split(",") for line in out.strip().splitlines() if line)}
    pids = server.model_processes()
    return {"gpu_bytes_by_model": {name: used.get(pid, 0) for name, pid in pids.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--sources", default="lora,merged-fp16,merged-int8",
                   help="archive sources (merged-nf4/bnb8 need a GPU)")
    p.add_argument("--size", type=int, default=64, help="image side of the one request per model")
    p.add_argument("--steps", type=int, default=2, help="inference steps of that request")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the archives an earlier run left in --out (their footprint is measured again)")
    a = p.parse_args(argv)

    import reader_envs

    env = reader_envs.ensure_env("triton")
    work = a.out or Path(tempfile.mkdtemp(prefix="bench-triton-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = [s.strip() for s in a.sources.split(",") if s.strip()]
    if a.reuse and all((work / s / "manifest.json").is_file() for s in sources):
        archives, entries = reuse_archives(work, sources)
    else:
        _, archives, entries = export_archives(work, a.arch, sources, env)
    results = measure(archives, env, work, a.size, a.steps)
    print(f"{'source':<12} {'archive MB':>10} {'load s':>7} {'RSS@load':>8} {'RSS MB':>8} {'PSS MB':>8} "
          f"{'infer s':>8} {'manifest RSS MB':>15} {'weights MB':>10}")
    for source, r in results.items():
        fp = entries[source].get("footprint", {})
        print(f"{source:<12} {entries[source]['bytes'] / 1e6:>10.1f} {r['load_seconds']:>7.2f} "
              f"{r['rss_after_load_bytes'] / 1e6:>8.0f} {r['rss_bytes'] / 1e6:>8.0f} {r.get('pss_bytes', 0) / 1e6:>8.0f} "
              f"{r['infer_seconds']:>8.2f} {fp.get('rss_bytes', 0) / 1e6:>15.0f} {fp.get('weights_bytes', 0) / 1e6:>10.1f}")
    if a.json:
        a.json.write_text(json.dumps({"arch": a.arch, "server": results, "manifest": entries}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
