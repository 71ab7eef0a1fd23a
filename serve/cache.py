"""The two adapter caches: LoRA files on local disk, converted weights in memory. Both LRU,
both thread-safe, both counting what they do (``stats``)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable


class MemoryCache:
    """key -> loaded adapter (its weights ready to swap in), at most ``size`` of them."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0}

    def get(self, key: str):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.stats["hits"] += 1
                return self._items[key]
            self.stats["misses"] += 1
            return None

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
                self.stats["evictions"] += 1

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def nbytes(self) -> int:
        with self._lock:
            return sum(getattr(v, "nbytes", 0) for v in self._items.values())


class DiskCache:
    """Entry name -> folder under ``root``, at most ``size`` folders; the least recently used
    goes first. An entry is written into a temporary folder and renamed into place, so a
    folder present is complete (a crash mid-download leaves only a temporary folder, which
    the next start removes)."""

    def __init__(self, root: Path, size: int):
        self.root, self.size = Path(root), size
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime)
        self._used: OrderedDict[str, float] = OrderedDict((p.name, p.stat().st_mtime) for p in folders)
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "writes": 0, "evictions": 0}
        self._evict()

    def get(self, name: str) -> Path | None:
        with self._lock:
            if name not in self._used:
                return None
            self._used[name] = time.time()
            self._used.move_to_end(name)
            self.stats["hits"] += 1
            return self.root / name

    def put(self, name: str, write: Callable[[Path], None]) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            write(tmp)
            target = self.root / name
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            self._used[name] = time.time()
            self._used.move_to_end(name)
            self.stats["writes"] += 1
            self._evict()
        return target

    def _evict(self) -> None:
        while len(self._used) > self.size:
            name, _ = self._used.popitem(last=False)
            shutil.rmtree(self.root / name, ignore_errors=True)
            self.stats["evictions"] += 1

    def names(self) -> list[str]:
        with self._lock:
            return list(self._used)
