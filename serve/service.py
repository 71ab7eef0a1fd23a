"""One invocation end to end, over the engines and the caches: ``Server.invoke(body) -> dict``.

    body -> Generation (request.py) -> ModelRef (sources.py) -> adapter: memory cache, else
    the LoRA file (local folder, disk cache, or S3 into the disk cache) read and checked
    (adapters.py) -> an engine renders with exactly that adapter (engine.py) -> images.

Fetching and reading an adapter happen outside the engines' locks, so one user's download
never holds up another user's render. The base loads in the background (``start``); until it
is in, /ping answers 503 and invocations are refused with the same status.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fanout.store import ModelStore
from serve.adapters import Adapter, check_ref, read_adapter
from serve.cache import DiskCache, MemoryCache
from serve.config import ServeConfig
from serve.errors import NotReady, ServeError
from serve.request import decode_body, parse_request
from serve.sources import Fetcher, ModelRef, Resolver, download_base

log = logging.getLogger("serve")
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class Server:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.state, self.error = "loading", ""
        self.engines: list = []
        self.memory = MemoryCache(cfg.cache_size)
        self.disk = DiskCache(Path(cfg.cache_dir) / "adapters", cfg.disk_cache_size)
        table = ModelStore(self._client("dynamodb"), cfg.models_table) if cfg.models_table else None
        self.resolver = Resolver(cfg.models_root, cfg.model_prefixes, table)
        self.fetcher = Fetcher(self.disk, cfg.max_adapter_bytes, self._client("s3") if cfg.model_prefixes else None)
        self.counts: dict[str, int] = {"requests": 0, "ok": 0}
        self._count_lock = threading.Lock()
        self.started = time.time()

    def _client(self, service: str):
        from fanout.settings import make_client

        return make_client(service, self.cfg.region, self.cfg.endpoint_url)

    # --- start --------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the base onto every device (in the background thread the app starts)."""
        try:
            import torch

            from serve.engine import Engine, devices
            from train.fingerprint import base_model_identity

            if self.cfg.threads:
                torch.set_num_threads(self.cfg.threads)
            base = self._base_dir()
            sha = base_model_identity(base)["weights_sha256"]
            t0 = time.perf_counter()
            self.engines = [Engine(self.cfg, base, device, sha) for device in devices(self.cfg)]
            log.info("base %s (%s) loaded on %s in %.1f s", base, self.engines[0].family.name,
                     ", ".join(str(e.device) for e in self.engines), time.perf_counter() - t0)
            self.state = "ready"
        except Exception as exc:  # the container stays up and says why on /ping
            log.exception("the base could not be loaded")
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"

    def _base_dir(self) -> Path:
        if not self.cfg.base_model.startswith("s3://"):
            return Path(self.cfg.base_model)
        root = Path(self.cfg.cache_dir) / "base"
        root.mkdir(parents=True, exist_ok=True)
        return download_base(self._client("s3"), self.cfg.base_model, root)

    # --- requests -----------------------------------------------------------------------------

    def invoke(self, raw: bytes) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._count("requests")
        if self.state != "ready":
            raise NotReady(f"the base model is {'still loading' if self.state == 'loading' else 'not loaded: ' + self.error}")
        body = decode_body(raw)
        engine = self.engines[0]
        gen = parse_request(body, engine.limits)
        ref = self.resolver.resolve(gen.model)
        adapter, source = self._adapter(ref, engine.served)
        engine = self._pick(ref.key)
        images, hot, warnings = engine.render(gen, adapter)
        cache = "hit" if source == "memory" else "miss"
        self._count("ok")
        self._count(f"cache_{cache}")
        self._count(f"source_{'pipeline' if hot else source}")
        return {"images": [_encode(image, gen.output_format) for image in images], "model": gen.model,
                "cache": cache, "seconds": round(time.perf_counter() - t0, 4),
                "adapter": {"source": "pipeline" if hot else source, "rank": adapter.rank,
                            "family": engine.family.name},
                "parameters": gen.parameters(), "warnings": warnings}

    def _adapter(self, ref: ModelRef, served) -> tuple[Adapter, str]:
        check_ref(ref, served)
        found = self.memory.get(ref.key)
        if found is not None:
            return found, "memory"
        folder, source = self.fetcher.local_folder(ref)
        adapter = read_adapter(ref, folder, served)
        self.memory.put(ref.key, adapter)
        return adapter, source

    def _pick(self, key: str):
        """The engine that has this adapter in already, else a free one, else the first."""
        free = [e for e in self.engines if not e.lock.locked()]
        for engine in free + self.engines:
            if engine.current == key:
                return engine
        return (free or self.engines)[0]

    def failed(self, error: ServeError) -> None:
        self._count(f"status_{error.status}")

    def _count(self, name: str) -> None:
        with self._count_lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "uptime_s": round(time.time() - self.started, 1),
                "family": self.engines[0].family.name if self.engines else None,
                "devices": [str(e.device) for e in self.engines], "compiled": any(e.compiled for e in self.engines),
                "max_rank": self.cfg.max_rank, "counts": dict(self.counts),
                "memory_cache": {**self.memory.stats, "size": self.cfg.cache_size, "entries": len(self.memory.keys()),
                                 "bytes": self.memory.nbytes()},
                "disk_cache": {**self.disk.stats, "size": self.cfg.disk_cache_size, "entries": len(self.disk.names())},
                "swaps": sum(e.swaps for e in self.engines)}


def _encode(image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format=PIL_FORMATS[fmt])
    return base64.b64encode(buf.getvalue()).decode("ascii")
