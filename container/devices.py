"""Which device each slot of this host runs on: one slot per visible GPU, or CPU slots.

A slot is one worker process with its own warm base model. On a host with G GPUs there are
G slots, each pinned to one GPU through ``CUDA_VISIBLE_DEVICES`` (so inside the slot the GPU
is ``cuda:0`` and no other GPU exists for it); ``gpus_per_host`` can lower G. On a host
without a GPU there is one CPU slot, or ``gpus_per_host`` of them (how the tests and the demo
run slots here). Each slot gets an equal share of the host's CPU threads.

Stdlib only: the supervisor counts GPUs the way SageMaker's own toolkit does (``nvidia-smi
--list-gpus``) and never imports torch, so a CUDA fault can only ever happen in a slot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from container.errors import JobConfigError

GPU_ENV = "CUDA_VISIBLE_DEVICES"
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class SlotDevice:
    """Where one slot runs: its index on the host, its GPU (None: CPU) and its CPU threads."""

    index: int
    gpu: str | None
    threads: int

    @property
    def label(self) -> str:
        return f"gpu {self.gpu}" if self.gpu is not None else "cpu"

    def environ(self) -> dict[str, str]:
        """Set in the slot process before torch is imported: CUDA and OpenMP read them once."""
        env = {name: str(self.threads) for name in THREAD_ENVS}
        if self.gpu is not None:
            env[GPU_ENV] = self.gpu
            # nvidia-smi numbers GPUs by PCI bus; CUDA's default order is "fastest first".
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env


def slot_devices(requested: int | None, gpus: Sequence[str], threads: int,
                 source: str = "hyperparameters.json") -> list[SlotDevice]:
    """The slots of this host: ``requested`` (gpus_per_host) or one per GPU; CPU slots without GPUs."""
    if gpus:
        if requested is not None and requested > len(gpus):
            raise JobConfigError(
                f"{source}: gpus_per_host={requested} but this host sees {len(gpus)} GPU(s) "
                f"({GPU_ENV} entries / nvidia-smi: {', '.join(gpus)}); set it to at most {len(gpus)}, "
                "or leave it unset to use every GPU"
            )
        pinned: list[str | None] = list(gpus[: requested or len(gpus)])
    else:
        pinned = [None] * (requested or 1)
    # Threads divided, never oversubscribed: G slots x T/G threads use the host's T cores once.
    share = max(1, threads // len(pinned))
    return [SlotDevice(index=i, gpu=gpu, threads=share) for i, gpu in enumerate(pinned)]


def visible_gpus(environ: Mapping[str, str] | None = None,
                 list_gpus: Callable[[], list[str] | None] | None = None,
                 dev: Path = Path("/dev")) -> list[str]:
    """The GPUs this host's processes may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES`` when set (CUDA stops at the first entry that is not a device, as
    with "-1"); else the GPUs ``nvidia-smi --list-gpus`` prints; else the /dev/nvidiaN nodes
    the container runtime mapped in; else none.
    """
    environ = os.environ if environ is None else environ
    if GPU_ENV in environ:
        entries = []
        for entry in (e.strip() for e in environ[GPU_ENV].split(",")):
            if not entry or entry.startswith("-"):
                break
            entries.append(entry)
        return entries
    listed = (list_gpus or _nvidia_smi_gpus)()
    if listed is not None:
        return listed
    nodes = sorted(int(m.group(1)) for p in (dev.glob("nvidia*") if dev.is_dir() else ())
                   if (m := re.fullmatch(r"nvidia(\d+)", p.name)))
    return [str(n) for n in nodes]


def host_threads(environ: Mapping[str, str] | None = None) -> int:
    """CPU threads this host may use: OMP_NUM_THREADS when set (fanout local splits the cores
    between emulated hosts this way), else the cores this process may run on."""
    environ = os.environ if environ is None else environ
    try:
        value = int(environ.get("OMP_NUM_THREADS", ""))
        if value >= 1:
            return value
    except ValueError:
        pass
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _nvidia_smi_gpus() -> list[str] | None:
    """GPU indexes from ``nvidia-smi --list-gpus`` ("GPU 0: NVIDIA A10G (UUID: ...)"), or None
    when there is no nvidia-smi or it fails (no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--list-gpus"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [m.group(1) for line in out.splitlines() if (m := re.match(r"GPU (\d+):", line.strip()))]
