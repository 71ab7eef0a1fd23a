#!/usr/bin/env python3
"""Run the real `tritonserver` of the cached triton env (scripts/reader_envs.py) the way a GPU
multi-model endpoint does: explicit model control, models loaded and unloaded through the HTTP
repository API. Used by tests/train/test_export_triton.py and scripts/bench_triton.py.

    with TritonServer(repository) as server:
        server.load("user-a"); png = server.infer("user-a", "a photo", seed=0, steps=2, size=(64, 64))
        server.unload("user-a")

Only the standard library talks to the server (the KServe v2 HTTP/JSON protocol; the PNG comes
back as binary data), so nothing beyond the wheel's binary is needed on the client side.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import reader_envs  # siblings: scripts/ is on sys.path when this runs or is loaded
from serve_process import free_port


class TritonError(RuntimeError):
    """The server failed to start, or answered a request with an error (its message included)."""


class TritonServer:
    def __init__(self, repository: Path, *, env: Path | None = None, log_path: Path | None = None,
                 threads: int = 1, start_timeout: float = 120):
        self.repository = Path(repository)
        self.env = env or reader_envs.ensure_env("triton")
        self.log_path = log_path or self.repository.parent / "tritonserver.log"
        self.threads, self.start_timeout = threads, start_timeout
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "TritonServer":
        server = reader_envs.tritonserver_dir(self.env)
        cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repository}",
               "--model-control-mode=explicit", f"--backend-directory={server / 'backends'}",
               f"--http-port={self.port}", "--allow-grpc=false", "--allow-metrics=false", "--log-verbose=0"]
        # One torch thread per model process: several user models share the cores.
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TritonError(f"tritonserver exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self._request("GET", "/v2/health/live")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise TritonError(f"tritonserver not live after {self.start_timeout} s: {self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        text = Path(self.log_path).read_text(errors="replace") if Path(self.log_path).exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # --- repository API (what SageMaker's MME front end calls per target model) -------------
    def load(self, name: str) -> float:
        """Load `name`; returns the seconds the load call took (the model's cold start)."""
        t0 = time.perf_counter()
        self._check(*self._request("POST", f"/v2/repository/models/{name}/load", b"{}", timeout=600), f"load {name}")
        return time.perf_counter() - t0

    def unload(self, name: str) -> None:
        self._check(*self._request("POST", f"/v2/repository/models/{name}/unload", b"{}"), f"unload {name}")
        # Unloading is asynchronous: wait until the model is gone and its process has exited.
        deadline = time.monotonic() + 60
        while (self.ready(name) or name in self.model_processes()) and time.monotonic() < deadline:
            time.sleep(0.2)

    def ready(self, name: str) -> bool:
        return self._request("GET", f"/v2/models/{name}/ready")[0] == 200

    def index(self) -> list[dict]:
        status, body, _ = self._request("POST", "/v2/repository/index", b"{}")
        self._check(status, body, None, "index")
        return json.loads(body)

    def infer(self, name: str, prompt: str, *, seed: int = 0, steps: int = 2, size=(64, 64)) -> bytes:
        """PNG bytes of one image."""
        body = {"inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [seed]},
            {"name": "steps", "datatype": "INT32", "shape": [1], "data": [steps]},
            {"name": "size", "datatype": "INT32", "shape": [2], "data": list(size)}],
            "outputs": [{"name": "image", "parameters": {"binary_data": True}}]}
        status, raw, headers = self._request("POST", f"/v2/models/{name}/infer", json.dumps(body).encode(), timeout=600)
        self._check(status, raw, headers, f"infer {name}")
        n = int(headers["Inference-Header-Content-Length"])
        (length,) = struct.unpack("<I", raw[n:n + 4])  # BYTES tensors: 4-byte length, then the bytes
        return raw[n + 4:n + 4 + length]

    def model_processes(self) -> dict[str, int]:
        """`{model name: pid}` of the Python-backend stub process each loaded model runs in."""
        out = {}
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"triton_python_backend_stub") and len(args) > 1:
                model_py = Path(args[1].decode())
                if model_py.is_relative_to(self.repository):
                    out[model_py.parent.parent.name] = int(proc.name)
        return out

    # --- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, data: bytes | None = None, timeout: float = 30):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def _check(self, status: int, body: bytes, headers, what: str) -> None:
        if status != 200:
            try:
                message = json.loads(body).get("error", body.decode(errors="replace"))
            except ValueError:
                message = body.decode(errors="replace")
            raise TritonError(f"{what}: HTTP {status}: {message}")


def memory_of(pid: int) -> dict:
    """RSS and PSS (shared pages split between processes) of one process, in bytes."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    out = {"rss_bytes": int(status["VmRSS"].split()[0]) * 1024}
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        fields = dict(line.split(":", 1) for line in rollup.read_text().splitlines()[1:] if ":" in line)
        out["pss_bytes"] = int(fields["Pss"].split()[0]) * 1024
    return out
