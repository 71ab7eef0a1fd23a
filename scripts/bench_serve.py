#!/usr/bin/env python3
"""What one shared base costs per user: the inference server (serve/) against a whole model per
user (the SD 1.x Triton archive), on a tiny or SD 1.5-shaped base with random weights.

    python scripts/bench_serve.py [--arch tiny|sd15] [--users 1000] [--requests 200] [--cache-size 32]
    python scripts/bench_serve.py --gpu          # the same on CUDA with torch.compile (exits 0 without CUDA)

Prints:
1. adapter switch time by tier, medians over --switches users: cold (S3 -> disk -> memory ->
   pipeline), warm (disk -> memory -> pipeline), hot (memory -> pipeline), measured in process
   on the server's own classes (moto stands in for S3 on 127.0.0.1);
2. requests/s and the cache hit ratio for --requests requests over HTTP (`python -m serve`,
   4 in flight) whose users follow a Zipf law over --users users (most traffic from few users);
3. memory: the server process's RSS growth per adapter in its memory cache and each adapter's
   bytes, against the base pipeline's weights (what a pipeline per user would hold) and the
   Triton archive's measured footprint per loaded user (`train.export.triton.measure_footprint`:
   its own process with its own base copy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUCKET = "bench-serve"
CALL = {"prompt": "a photo of sks toy", "num_inference_steps": 1, "seed": 0}


def make_users(base: Path, work: Path, s3, count: int) -> tuple[Path, list[str]]:
    """One exported LoRA (the project's exporter, random up-projections) uploaded as ``count`` users."""
    import torch
    from peft import LoraConfig

    from train.export import ExportConfig, export_model
    from train.families import family_of

    family = family_of(base)
    pipe = family.load_pipeline(str(base), dtype=torch.float32)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model = work / "model"
    export_model(pipe, ExportConfig(formats="lora,triton", drift_check=False, triton_env="none"), model,
                 base_model_dir=base, train_text_encoder=False, rank=4, lora_alpha=4, family=family)
    s3.create_bucket(Bucket=BUCKET)
    names = []
    for i in range(count):
        prefix = f"models/user{i:04d}/r1/"
        for file in ("pytorch_lora_weights.safetensors", "manifest.json"):
            s3.upload_file(str(model / file), BUCKET, prefix + file)
        names.append(f"s3://{BUCKET}/{prefix}")
    return model, names


def switch_times(base: Path, work: Path, names: list[str], endpoint: str, count: int, device: str) -> dict:
    """Median seconds to get a user's adapter into the pipeline, by where it starts."""
    from serve.config import ServeConfig
    from serve.service import Server

    cfg = ServeConfig(base_model=str(base), cache_dir=str(work / "cache-switch"), cache_size=count,
                      models_uri=f"s3://{BUCKET}/models/", endpoint_url=endpoint, region="us-east-1",
                      max_rank=4, device=device)
    server = Server(cfg)
    server.start()
    if server.state != "ready":
        raise SystemExit(f"the base did not load: {server.error}")
    engine = server.engines[0]
    tiers: dict[str, list[float]] = {"cold (S3)": [], "warm (disk)": [], "hot (memory)": []}
    users = names[:count]
    for tier in tiers:
        if tier == "warm (disk)":
            server.memory = type(server.memory)(cfg.cache_size)   # memory emptied, disk kept
        for name in users:
            t0 = time.perf_counter()
            ref = server.resolver.resolve(name)
            adapter, _ = server._adapter(ref, engine.served)
            with engine.lock:
                engine._swap(adapter)
            tiers[tier].append(time.perf_counter() - t0)
    return {tier: statistics.median(values) for tier, values in tiers.items()}


def zipf_users(names: list[str], requests: int, s: float = 1.1, seed: int = 0) -> list[str]:
    import numpy as np

    ranks = np.arange(1, len(names) + 1)
    weights = 1.0 / ranks ** s
    rng = np.random.default_rng(seed)
    return [names[i] for i in rng.choice(len(names), size=requests, p=weights / weights.sum())]


def rss(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024


def throughput(base: Path, work: Path, names: list[str], endpoint: str, args) -> dict:
    import requests
    from serve_process import ServeProcess

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with ServeProcess(base, "--models-uri", f"s3://{BUCKET}/models/", "--endpoint-url", endpoint, "--region",
                      "us-east-1", "--cache-size", args.cache_size, "--disk-cache-size", 4 * args.cache_size,
                      "--max-rank", 4, "--cache-dir", work / "cache-http", "--device", args.device, env=env,
                      threads=args.threads, log_path=work / "serve.log") as server:
        session = requests.Session()

        def ask(name):
            answer = session.post(server.url + "/invocations", json={**CALL, "model": name}, timeout=600)
            answer.raise_for_status()
            return answer.json()["cache"]

        ask(names[0])
        before = rss(server.proc.pid)
        for name in names[1:args.cache_size + 1]:          # fill the memory cache
            ask(name)
        per_adapter = (rss(server.proc.pid) - before) / args.cache_size
        stats = server.stats()
        mix = zipf_users(names, args.requests)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            caches = list(pool.map(ask, mix))
        seconds = time.perf_counter() - t0
    return {"requests_per_s": len(mix) / seconds, "hit_ratio": caches.count("hit") / len(caches),
            "distinct_users": len(set(mix)), "rss_per_cached_adapter": per_adapter,
            "adapter_bytes": stats["memory_cache"]["bytes"] / max(1, stats["memory_cache"]["entries"])}


def pipeline_bytes(base: Path) -> int:
    import torch

    from train.families import family_of

    pipe = family_of(base).load_pipeline(str(base), dtype=torch.float32)
    return sum(t.numel() * t.element_size() for m in pipe.components.values() if isinstance(m, torch.nn.Module)
               for t in list(m.parameters()) + list(m.buffers()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--cache-size", type=int, default=32)
    p.add_argument("--switches", type=int, default=10, help="users per switch-time tier")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--gpu", action="store_true", help="run on CUDA (compiled); exits 0 when there is no GPU")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    import torch

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    if args.gpu and not torch.cuda.is_available():
        print("bench_serve --gpu: no CUDA GPU here, nothing measured")
        return 0
    args.device = "cuda" if args.gpu else "cpu"
    torch.set_num_threads(args.threads)
    import make_tiny_model
    from moto.server import ThreadedMotoServer

    from fanout.settings import make_client
    from train.export.triton import measure_footprint

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        base = make_tiny_model.build_pipeline(work / f"base-{args.arch}", arch=args.arch)
        model, names = make_users(base, work, make_client("s3", "us-east-1", endpoint), args.users)
        switch = switch_times(base, work, names, endpoint, args.switches, args.device)
        http = throughput(base, work, names, endpoint, args)
        manifest = json.loads((model / "manifest.json").read_text())
        footprint = measure_footprint(model / manifest["formats"]["triton"]["path"])
        full = pipeline_bytes(base)
    finally:
        moto.stop()
    print(f"bench_serve ({args.arch} SD base, {args.device}, {args.users} users; one base per device)")
    print("adapter switch, median seconds: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in switch.items()))
    print(f"Zipf(1.1) mix over {args.users} users, {args.requests} requests, 4 in flight, memory cache "
          f"{args.cache_size}: {http['requests_per_s']:.2f} requests/s, hit ratio {http['hit_ratio']:.2f}, "
          f"{http['distinct_users']} distinct users")
    print(f"memory per cached adapter: {http['rss_per_cached_adapter'] / 1e6:.2f} MB RSS growth "
          f"({http['adapter_bytes'] / 1e6:.2f} MB of LoRA tensors)")
    print(f"a full pipeline per user: {full / 1e6:.1f} MB of weights; the Triton archive per loaded user: "
          f"{footprint['rss_bytes'] / 1e6:.0f} MB RSS (its own process and base copy; "
          f"{footprint['model_rss_bytes'] / 1e6:.0f} MB over the runtime)")
    print(f"so {args.users} users cost one base + {args.cache_size} cached adapters here, against "
          f"{args.users} x {footprint['rss_bytes'] / 1e6:.0f} MB loaded as Triton models")
    if args.json:
        args.json.write_text(json.dumps({"switch_s": switch, **http, "pipeline_bytes": full,
                                         "triton_footprint": footprint}, indent=2))
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
