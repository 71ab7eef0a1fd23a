"""Screening a task's photos before a GPU minute is spent on them.

A blurry photo, the same photo three times, a 300-pixel thumbnail or a photo of four people
costs the user a worse model and the SaaS a full training run. Each photo goes through the
checks cheapest first:

    small      the header's size against the training resolution (no pixel decoded)
    duplicate  perceptual-hash distance to a photo already accepted (train/vision.py)
    blur       variance of the Laplacian under ``blur_threshold``
    faces      more than ``max_faces`` faces (OpenCV's Haar cascade)

``screen`` decides what happens to a photo with findings: ``warn`` trains on everything and
records the findings, ``drop`` leaves failing photos out while at least ``min_images``
remain (else the task fails naming them), ``fail`` refuses the task, ``off`` skips it. In
``drop`` and ``fail`` modes a photo that already failed a check is not measured further (a
thumbnail is never decoded, a duplicate never meets the face detector). The record goes into
status.json and manifest.json as ``screening`` (shape in docs/train.md).

The container screens each task when it checks its config, before the base model loads
(``train.api.Trainer.screen``); ``run_task`` screens again and gets the same answer from the
per-file cache of measurements, at no cost.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from train.errors import DataError
from train.photos import file_key

CHECKS = ("small", "duplicate", "blur", "faces")      # cheapest first
SCREEN_MODES = ("warn", "drop", "fail", "off")
SHOWN = 8                                             # photos named in one error message


@dataclass(frozen=True)
class Rules:
    """What the checks compare against (from the task's TrainConfig)."""

    mode: str = "warn"
    checks: tuple[str, ...] = CHECKS
    resolution: int = 512
    bucket: bool = False          # crop=bucket: compare pixel counts, not the short side
    blur_threshold: float = 50.0
    duplicate_distance: int = 8
    max_faces: int = 1
    min_images: int = 1
    max_pixels: int = 64_000_000
    keep_side: int = 0            # a decode training can reuse (train.photos.open_photo keep_side)

    @classmethod
    def from_config(cls, cfg) -> "Rules":
        from train.crops import side_needed

        return cls(mode=cfg.screen, checks=cfg.checks, resolution=cfg.resolution, bucket=cfg.crop == "bucket",
                   blur_threshold=cfg.blur_threshold, duplicate_distance=cfg.duplicate_distance,
                   max_faces=cfg.max_faces, min_images=cfg.min_images, max_pixels=cfg.max_image_pixels,
                   keep_side=side_needed(cfg.crop, cfg.resolution))


@dataclass(frozen=True)
class Facts:
    """What was measured in one photo (cached per file: the second screening is free)."""

    hash: int | None = None
    sharpness: float | None = None
    faces: tuple | None = None      # vision.Box tuples; None = not looked for
    seconds: float = 0.0


@dataclass(frozen=True)
class Finding:
    check: str
    value: float | int | None
    limit: float | int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "value": self.value, "limit": self.limit, "message": self.message}


@dataclass(frozen=True)
class Verdict:
    file: str
    kept: bool
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class Screening:
    mode: str
    verdicts: tuple[Verdict, ...]
    seconds: float

    @property
    def kept_files(self) -> list[str]:
        return [v.file for v in self.verdicts if v.kept]

    def to_dict(self) -> dict[str, Any]:
        """The ``screening`` object of status.json and manifest.json."""
        kept = sum(v.kept for v in self.verdicts)
        return {"mode": self.mode, "kept": kept, "dropped": len(self.verdicts) - kept, "seconds": self.seconds,
                "images": [{"file": v.file, "kept": v.kept, "findings": [f.to_dict() for f in v.findings]}
                           for v in self.verdicts]}


class ScreeningError(DataError):
    """Screening refused the task; ``status_fields`` carries the record for status.json."""

    def __init__(self, message: str, screening: Screening):
        super().__init__(message)
        self.screening = screening
        self.status_fields = {"screening": screening.to_dict()}


# --- the task's photos ----------------------------------------------------------------------

def screen_task(cfg) -> Screening | None:
    """Screen ``cfg.instance_data`` by the task's settings (None with ``screen=off``)."""
    from train.data import image_files

    if cfg.screen == "off" or not cfg.instance_data:   # no folder: run_task names the missing field
        return None
    folder = Path(cfg.instance_data)
    if not folder.is_dir():
        raise DataError(f"instance data: {folder} is not a folder")
    return screen(folder, image_files(folder), Rules.from_config(cfg))


def screen(folder: Path, files: Sequence[Path], rules: Rules) -> Screening:
    """Measure and judge ``files`` (in ``folder``); raises ScreeningError when the mode refuses."""
    from train.data import refuse_links_out

    refuse_links_out(folder, list(files))       # nothing outside the task's folder is read, not even here
    t0 = time.monotonic()
    names = [f.name for f in files]
    by_name = dict(zip(names, files))
    strict = rules.mode in ("drop", "fail")
    sizes = {n: _header(by_name[n], rules.max_pixels) for n in names}
    header_seconds = time.monotonic() - t0
    findings: dict[str, list[Finding]] = {n: [] for n in names}

    def live() -> list[str]:      # in drop/fail mode a failing photo is not measured further
        return [n for n in names if not (strict and findings[n])]

    if "small" in rules.checks:
        for n in names:
            _add(findings, n, small_finding(*sizes[n], rules))
    greys: dict[Path, Any] = {}
    facts: dict[str, Facts] = {}
    if {"duplicate", "blur"} & set(rules.checks):
        facts.update({n: measure(by_name[n], rules.max_pixels, greys=greys, keep_side=rules.keep_side)
                      for n in live()})
    if "duplicate" in rules.checks:
        # Of near-duplicates the largest photo is kept, then the sharpest.
        preference = {n: (-sizes[n][0] * sizes[n][1], -facts[n].sharpness, n) for n in live()}
        for n, found in duplicate_findings({n: facts[n].hash for n in live()}, preference,
                                           rules.duplicate_distance).items():
            _add(findings, n, found)
    if "blur" in rules.checks:
        for n in live():
            _add(findings, n, blur_finding(facts[n].sharpness, rules.blur_threshold))
    if "faces" in rules.checks:
        for n in live():
            facts[n] = measure(by_name[n], rules.max_pixels, faces=True, greys=greys, keep_side=rules.keep_side)
            _add(findings, n, faces_finding(len(facts[n].faces), rules.max_faces))
    # What measuring these photos cost, also when the measures came from the cache.
    seconds = round(header_seconds + sum(f.seconds for f in facts.values()), 3)
    return enforce(folder, names, findings, rules, seconds)


def enforce(folder: Path, names: Sequence[str], findings: dict[str, list[Finding]], rules: Rules,
            seconds: float) -> Screening:
    """The verdict per photo under ``rules.mode``; ScreeningError when the task cannot train."""
    failing = [n for n in names if findings[n]]
    refused = rules.mode in ("drop", "fail")    # a refused photo is not trained on (kept: false)
    verdicts = tuple(Verdict(n, kept=not (refused and findings[n]), findings=tuple(findings[n])) for n in names)
    result = Screening(rules.mode, verdicts, seconds)
    if failing and rules.mode == "fail":
        raise ScreeningError(f"instance data {folder}: screening (screen=fail) refused {len(failing)} of "
                             f"{len(names)} photo(s): {_listing(failing, findings)}", result)
    if failing and rules.mode == "drop" and len(names) - len(failing) < rules.min_images:
        raise ScreeningError(f"instance data {folder}: screening (screen=drop) would leave "
                             f"{len(names) - len(failing)} of {len(names)} photo(s), fewer than min_images="
                             f"{rules.min_images}; failing: {_listing(failing, findings)}", result)
    return result


def _listing(failing: Sequence[str], findings: dict[str, list[Finding]]) -> str:
    shown = "; ".join(f"{n} ({', '.join(f.message for f in findings[n])})" for n in failing[:SHOWN])
    return shown + (f"; and {len(failing) - SHOWN} more" if len(failing) > SHOWN else "")


def _add(findings: dict[str, list[Finding]], name: str, found: Finding | None) -> None:
    if found is not None:
        findings[name].append(found)


# --- the checks: pure functions of what was measured ------------------------------------------

def small_finding(width: int, height: int, rules: Rules) -> Finding | None:
    r = rules.resolution
    if rules.bucket:
        if width * height >= r * r:
            return None
        return Finding("small", width * height, r * r, f"small: {width}x{height} has fewer pixels than the "
                       f"{r}x{r} a bucket trains at, so it would be upscaled")
    if min(width, height) >= r:
        return None
    return Finding("small", min(width, height), r, f"small: {width}x{height}, its short side is under the "
                   f"training resolution {r}, so it would be upscaled")


def duplicate_findings(hashes: dict[str, int], preference: dict[str, Any], distance: int) -> dict[str, Finding]:
    """Near-duplicates: photos are taken in ``preference`` order (lowest first), and each one
    whose hash is within ``distance`` bits of a photo already taken is a duplicate of the
    nearest such photo."""
    from train.vision import hamming

    taken: list[str] = []
    found = {}
    for n in sorted(hashes, key=lambda n: preference[n]):
        near = min(((hamming(hashes[n], hashes[t]), t) for t in taken), default=None)
        if near is not None and near[0] <= distance:
            found[n] = Finding("duplicate", near[0], distance, f"duplicate: a near-duplicate of {near[1]} "
                               f"(perceptual hash distance {near[0]} <= {distance})")
        else:
            taken.append(n)
    return found


def blur_finding(sharpness: float, threshold: float) -> Finding | None:
    if sharpness >= threshold:
        return None
    return Finding("blur", round(sharpness, 1), threshold, f"blur: sharpness {sharpness:.1f} (variance of the "
                   f"Laplacian) is under {threshold:g}")


def faces_finding(count: int, max_faces: int) -> Finding | None:
    if count <= max_faces:
        return None
    return Finding("faces", count, max_faces, f"faces: {count} faces, more than {max_faces}; the model may "
                   "learn the wrong person")


# --- measuring, cached per file --------------------------------------------------------------

_CACHE: "OrderedDict[tuple, Facts]" = OrderedDict()
CACHE_SIZE = 2048


def measure(path: Path, max_pixels: int, *, faces: bool = False, greys: dict | None = None,
            keep_side: int = 0) -> Facts:
    """Hash and sharpness of ``path`` (and its faces when asked), from the cache when the file
    has not changed since it was measured. ``keep_side``: the decode is kept for training
    (formats that cannot be decoded small)."""
    from train import vision

    key = file_key(path)
    cached = _CACHE.get(key)
    if cached is not None and (cached.faces is not None or not faces):
        _CACHE.move_to_end(key)
        return cached
    t0 = time.monotonic()
    greys = {} if greys is None else greys
    if path not in greys:
        greys[path] = vision.analysis_grey(_analysis_photo(path, max_pixels, keep_side))
    grey = greys[path]
    try:
        fact = cached or Facts(hash=vision.perceptual_hash(grey), sharpness=vision.sharpness(grey))
        if faces:
            fact = replace(fact, faces=tuple(vision.faces(grey)))
    except Exception as exc:  # cv2.error and friends: one photo that cannot be measured fails the task
        raise DataError(f"{path}: could not be measured for screening ({type(exc).__name__}: {exc})") from None
    fact = replace(fact, seconds=round(fact.seconds + time.monotonic() - t0, 4))
    _CACHE[key] = fact
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fact


def face_boxes(files: Sequence[Path], max_pixels: int, keep_side: int = 0) -> dict[str, tuple]:
    """{file name: detected face boxes} for the face crop (measured once, shared with screening)."""
    return {f.name: measure(f, max_pixels, faces=True, keep_side=keep_side).faces for f in files}


def _header(path: Path, max_pixels: int) -> tuple[int, int]:
    from train.photos import pixel_size

    return pixel_size(path, max_pixels)


def _analysis_photo(path: Path, max_pixels: int, keep_side: int = 0):
    """The photo decoded no larger than the measures need (JPEG decodes at 1/2, 1/4, 1/8 scale)."""
    from train.photos import open_at_least
    from train.vision import ANALYSIS_SIDE

    return open_at_least(path, max_pixels, ANALYSIS_SIDE, keep_side=keep_side)
