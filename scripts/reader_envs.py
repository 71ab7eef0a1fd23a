#!/usr/bin/env python3
"""Build (once) and cache the separate Python environments the export tests read with.

    python scripts/reader_envs.py triton      # prints the env's folder
    python scripts/reader_envs.py old-stack

- `triton`: the serving env a Triton Python-backend model runs in (EXECUTION_ENV_PATH): the
  current torch/diffusers stack with numpy<2 (the Python backend of tritonserver 2.51 crashes
  on string inputs with numpy 2), plus the `nvidia-pytriton` wheel for its bundled
  `tritonserver` binary and Python-backend stubs. The stub of this interpreter's Python version
  is copied into the backend folder and its libpython linked into the env's lib/, so the stub
  finds the same Python the env was made with.
- `triton-host`: the same server and numpy<2 over this interpreter's own packages (for the GPU
  check: a CUDA torch there).
- `optimum`: Hugging Face Optimum's ONNX Runtime pipelines (optimum-onnx 0.1.0, which needs
  transformers < 4.58) with onnxruntime, to load the `onnx` export the way its users do.
- `old-stack`: what many serving images pin: diffusers 0.32 + transformers 4.54 + peft 0.17,
  with diffusers 0.35 beside it in `diffusers-0.35/` (put first on PYTHONPATH to read with it).
  torch is the project's CPU wheel (2.13.0): PyPI has no older CPU-only torch (its 2.5 wheel
  is 906 MB plus CUDA libraries), and the old stack runs on it.

Each env lives under `$LORA_FANOUT_CACHE` (default ~/.cache/lora-fanout) in `envs/<name>-<hash
of its recipe>`, outside the clone, so a fresh clone's `make test` builds it once (about a
minute or two each) and later runs reuse it. A build is marked complete by a `.ready` file
written last; a half-built env is removed and built again. A lock keeps two test processes
from building the same env at once.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

TORCH = "torch==2.13.0"
RECIPES: dict[str, dict[str, list[str]]] = {
    "triton": {
        "packages": [TORCH, "numpy==1.26.4", "diffusers==0.42.1", "transformers==5.23.0", "peft==0.21.2",
                     "accelerate==1.15.0", "safetensors>=0.4", "Pillow>=10", "torchao==0.18.0"],
        "no_deps": ["nvidia-pytriton==0.7.0"],  # only its tritonserver binary is used, not its client API
        "side": [],
    },
    # For the GPU check: numpy<2 and the server over THIS interpreter's packages (a CUDA torch
    # on a GPU machine), linked in with a .pth file that comes after the env's own numpy.
    "triton-host": {
        "packages": ["numpy==1.26.4"],
        "no_deps": ["nvidia-pytriton==0.7.0"],
        "side": [],
        "host_site": True,
    },
    "optimum": {
        "packages": [TORCH, "optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "diffusers==0.35.2",
                     "onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.2.6"],
        "no_deps": [],
        "side": [],
    },
    "old-stack": {
        "packages": [TORCH, "diffusers==0.32.2", "transformers==4.54.1", "peft==0.17.1", "accelerate==1.15.0",
                     "safetensors>=0.4", "Pillow>=10"],
        "no_deps": [],
        "side": ["diffusers==0.35.2"],
    },
}
STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the wheel has stubs for 3.8-3.13


class EnvBuildError(RuntimeError):
    """An env could not be built (the message says which package step failed)."""


def cache_root() -> Path:
    return Path(os.environ.get("LORA_FANOUT_CACHE") or Path.home() / ".cache" / "lora-fanout")


def env_dir(name: str) -> Path:
    recipe = {**RECIPES[name], "python": sys.version.split()[0]}
    if recipe.get("host_site"):
        recipe["host"] = sys.prefix
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "envs" / f"{name}-{digest}"


def ensure_env(name: str, *, quiet: bool = True) -> Path:
    """The env's folder, built first when absent or half-built."""
    if name not in RECIPES:
        raise EnvBuildError(f"unknown env {name!r}; valid: {', '.join(RECIPES)}")
    target = env_dir(name)
    if (target / ".ready").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".ready").is_file():
            shutil.rmtree(target, ignore_errors=True)
            _build(name, target, quiet)
            (target / ".ready").write_text(json.dumps(RECIPES[name]) + "\n")
    return target


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def tritonserver_dir(env: Path) -> Path:
    """The `pytriton/tritonserver` folder of the triton env: bin/tritonserver, backends/."""
    site = subprocess.run([str(python_of(env)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return Path(site) / "pytriton" / "tritonserver"


def _build(name: str, target: Path, quiet: bool) -> None:
    recipe = RECIPES[name]
    _run([sys.executable, "-m", "venv", str(target)], "create the venv")
    pip = [str(python_of(target)), "-m", "pip", "install", "--no-input"] + (["-q"] if quiet else [])
    if TORCH in recipe["packages"]:  # torch first and alone: an unpinned resolve could pull a CUDA build
        _run([*pip, TORCH], f"install {TORCH}")
    _run([*pip, *recipe["packages"]], "install " + " ".join(recipe["packages"]))
    if recipe["no_deps"]:
        _run([*pip, "--no-deps", *recipe["no_deps"]], "install " + " ".join(recipe["no_deps"]))
    for spec in recipe["side"]:
        side = target / spec.replace("==", "-")
        _run([*pip, "--no-deps", "--target", str(side), spec], f"install {spec} into {side.name}/")
    if recipe.get("host_site"):
        own = subprocess.run([str(python_of(target)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        Path(own, "zz_host_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if name.startswith("triton"):
        _prepare_triton(target)


def _prepare_triton(target: Path) -> None:
    server = tritonserver_dir(target)
    stub = server / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"
    if not stub.is_file():
        raise EnvBuildError(f"could not install nvidia-pytriton==0.7.0 for Python {STUB_PYTHON}: "
                            "it has Python-backend stubs for 3.8-3.13 only")
    shutil.copy2(stub, server / "backends" / "python" / stub.name)
    # The Python backend puts EXECUTION_ENV_PATH/lib on the stub's library path: the libpython
    # found there must be this interpreter's, not a system Python 3.11 of another patch level.
    libname = sysconfig.get_config_var("INSTSONAME")
    libpython = Path(sysconfig.get_config_var("LIBDIR")) / libname
    if libname and libpython.is_file():
        (target / "lib" / libname).unlink(missing_ok=True)
        (target / "lib" / libname).symlink_to(libpython)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise EnvBuildError(f"could not {what} (exit {proc.returncode}):\n" + "\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--verbose", action="store_true", help="show pip's output")
    a = p.parse_args(argv)
    try:
        print(ensure_env(a.name, quiet=not a.verbose))
    except EnvBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
