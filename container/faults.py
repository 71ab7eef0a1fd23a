"""What a slot's failure means for its task and for the slot (pure; the host applies it).

Two kinds of failure end a task:

* **the task's own** (a bad image, a bad value, a LoRA that diverged, out of GPU memory at
  these settings): train raises inside the slot, the worker records the reason and the slot
  takes the next task. Retrying would fail the same way.
* **the process's** (the slot process died: the kernel's OOM killer, SIGKILL, a segfault in
  a native library; or a CUDA fault, after which every CUDA call of that process fails): the
  task is not to blame yet. The host starts a fresh process on the same slot, which resumes
  the task from its last saved state, once; a second process fault on the same task fails it
  with both reasons. A slot whose process faults ``MAX_SLOT_FAULTS`` times is retired (its GPU
  is likely bad) and the other slots take the rest of the queue.
"""

from __future__ import annotations

import signal

MAX_SLOT_FAULTS = 3  # a slot whose process faults this many times is retired

# What CUDA's sticky errors say. After one, the process's CUDA context is unusable: only a new
# process recovers (torch >= 2.8 raises torch.AcceleratorError; older torch a RuntimeError).
DEVICE_FAULT_MARKERS = (
    "CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error", "illegal memory access",
    "unspecified launch failure", "uncorrectable ECC error", "device-side assert",
)


def is_device_fault(exc: BaseException) -> bool:
    """True when ``exc`` left this process's GPU context broken (out of memory does not)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return False
    if type(exc).__name__ == "AcceleratorError":
        return True
    text = str(exc)
    return any(marker in text for marker in DEVICE_FAULT_MARKERS)


def death_reason(exitcode: int | None) -> str:
    """Why a slot process ended without reporting, from its exit code (negative: a signal)."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            return "was killed by SIGKILL (the kernel's out-of-memory killer, or an external kill)"
        return f"was killed by {name}"
    return f"exited with code {exitcode} without reporting"
