"""Resume state and status.json, both written atomically.

A state folder ``state/step-000010/`` is complete or absent, never half written: it is
written under a temporary name and renamed into place (a rename within one file system is
atomic). A run killed at any moment leaves at worst a stray ``.tmp-*`` folder, which the
next run removes, and the latest complete state to resume from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from train.errors import TrainError
from train.timings import PhaseTimer

STATE_NAME = re.compile(r"^step-(\d{6,})$")


def state_name(step: int) -> str:
    return f"step-{step:06d}"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older ``final``."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)


def remove_leftovers(root: Path) -> None:
    """Remove what a killed run left half written (never a complete state)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)


def complete_states(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete state, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STATE_NAME.match(p.name)
        if m and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_state(root: Path) -> Path | None:
    states = complete_states(root)
    return states[-1][1] if states else None


def prune_states(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest states (renamed away first, so none is ever half there)."""
    states = complete_states(root)
    for _, path in states[:len(states) - keep] if keep > 0 else states:
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:])}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(root: Path, step: int, *, lora: Mapping[str, Any], optimizer: Any, lr_scheduler: Any,
               meta: Mapping[str, Any]) -> Path:
    """Write the resume state of ``step`` atomically; return its folder."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{state_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in lora.items()}, tmp / "lora.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "rng": rng_states()}, tmp / "training.pt")
    # meta.json last: a folder with it is complete (the rename makes that hold across kills too).
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True))
    final = root / state_name(step)
    replace_dir(tmp, final)
    return final


def load_state(path: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "meta.json").read_text())
        training = torch.load(path / "training.pt", map_location="cpu", weights_only=False)
        lora = load_file(path / "lora.safetensors")
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainError(f"{path}: resume state is unreadable ({exc}); delete it to resume from an older one") from None
    return {"meta": meta, "lora": lora, **training}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


STATES = ("running", "completed", "failed", "interrupted")


class StatusFile:
    """checkpoint_dir/status.json: state, step, loss, timings, attempts, error (+ extra fields).

    ``timings`` holds seconds per phase (train.timings): ``with status.timings.phase("export"):``.

    The one writer of the file: train.task writes it while a task runs, and the container
    writes through it too (a task that failed before training started), so the format and
    the states (STATES) live here only and no one rewrites what another half wrote.
    """

    def __init__(self, path: Path, extra: Mapping[str, Any] | None = None):
        self.path = path
        previous = self._read()
        self.data: dict[str, Any] = {**dict(extra or {}), "attempts": int(previous.get("attempts", 0)),
                                     "state": "running", "step": int(previous.get("step", 0)),
                                     "loss": previous.get("loss"), "error": None,
                                     "started_at": None, "finished_at": None}
        self.previous = previous  # what the last attempt left (a resumed run carries its timings on)
        self.timings = PhaseTimer(on_change=lambda seconds: self.update(timings=seconds))

    def _read(self) -> dict[str, Any]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def start(self, total_steps: int) -> None:
        self.data.update(attempts=self.data["attempts"] + 1, started_at=now_iso(), total_steps=total_steps)
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, state: str, error: str | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"status state {state!r} is not one of {', '.join(STATES)}")
        self.update(state=state, error=error, finished_at=now_iso())

    def fail_unstarted(self, error: str) -> None:
        """A task that failed before training could start (a bad path, value or field found
        by the caller): one attempt that started and ended now."""
        stamp = now_iso()
        self.data.update(attempts=self.data["attempts"] + 1, started_at=stamp)
        self.update(state="failed", error=error, finished_at=stamp)

    def abandon(self, error: str, state: str = "failed") -> None:
        """The running attempt's process died (the container's host saw it): that attempt, which
        start() counted, ends now as ``state``; its started_at and total_steps are kept."""
        previous = self._read()
        self.data.update({k: previous[k] for k in ("started_at", "total_steps") if k in previous})
        self.finish(state, error=error)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)
