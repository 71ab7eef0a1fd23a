#!/usr/bin/env python3
"""Run the real inference server (`python -m serve`) as a child process on a free port, for the
tests, the demo and the benchmark:

    with ServeProcess(base_dir, "--models-root", root, "--cache-size", "4") as server:
        r = requests.post(server.url + "/invocations", json={...})

Waits until /ping is 200 (the base is loaded); stops the process (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServeError(RuntimeError):
    """The server did not come up (its log tail is in the message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, base_model, *args: str, env: dict | None = None, log_path: Path | None = None,
                 threads: int = 1, start_timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "serve", "--base-model", str(base_model), "--host", "127.0.0.1",
                    "--port", str(self.port), "--threads", str(threads), *map(str, args)]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
                    "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
                    **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None                  # the open log file while the process runs

    def __enter__(self) -> "ServeProcess":
        return self.start().wait_ready()

    def start(self) -> "ServeProcess":
        """Start the process and return at once (the base loads while the caller does other work)."""
        self._log = open(self.log_path, "wb") if self.log_path else None
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> "ServeProcess":
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(f"serve exited with {self.proc.returncode}: {self.log_tail()}")
            status, body = self.get("/ping")
            if status == 200:
                return self
            if status == 503 and json.loads(body or b"{}").get("status") == "failed":
                self.__exit__(None, None, None)
                raise ServeError(f"the base failed to load: {body.decode()}")
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise ServeError(f"serve not ready after {self.start_timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        self.__exit__(None, None, None)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def stats(self) -> dict:
        return json.loads(self.get("/stats")[1])

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log kept)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
