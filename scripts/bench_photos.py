#!/usr/bin/env python3
"""What reading and screening phone photos costs: seconds per 12-megapixel photo, JPEG and HEIC.

    python scripts/bench_photos.py [--count 4] [--side 4032] [--workdir build/bench-photos]

Writes ``count`` photos of ``side`` x 3/4 ``side`` pixels per format (scikit-image's real
photographs, upscaled, with sensor-like noise, an sRGB ICC profile embedded as phones do), then
times (wall and CPU seconds; torch and OpenCV on one thread) what a task does with them at 512 px centre crops and at 1024 px
buckets: the screening before the base loads (header, decode for measuring, pHash, Laplacian,
Haar faces: ``train.screen``), the screening again in run_task (cached measures), and loading
for training (decode, orientation, colour conversion, resize; HEIC reuses the screening's
decode). Needs the dev extra (scikit-image) for the source photographs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SOURCES = ("astronaut", "chelsea", "coffee", "motorcycle_left", "rocket", "camera")


def write_photos(folder: Path, count: int, side: int, fmt: str) -> None:
    import numpy as np
    import pillow_heif
    import skimage
    from PIL import Image, ImageCms

    pillow_heif.register_heif_opener()
    folder.mkdir(parents=True, exist_ok=True)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = Path(skimage.__file__).parent / "data"
    rng = np.random.default_rng(0)
    for i in range(count):
        name = SOURCES[i % len(SOURCES)]
        src = next(p for p in (data / f"{name}.png", data / f"{name}.jpg") if p.is_file())
        im = Image.open(src).convert("RGB").resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(im, np.int16) + rng.normal(0, 3, (side * 3 // 4, side, 3)), 0, 255)
        path = folder / f"IMG_{i:04d}.{'jpg' if fmt == 'JPEG' else 'heic'}"
        if not path.exists():
            Image.fromarray(noisy.astype(np.uint8)).save(path, fmt, quality=90, icc_profile=icc)


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``; CPU counts every thread of the process (libheif decodes
    with several), and is the steadier figure on a shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench(folder: Path, count: int, resolution: int, crop: str) -> dict[str, float]:
    """Seconds per photo of what a task does: screen (before the base loads), screen again
    (run_task; cached measures), then load for training."""
    from train import photos
    from train import screen as screening
    from train.config import TrainConfig
    from train.crops import Framing
    from train.data import load_images

    cfg = TrainConfig(instance_data=str(folder), instance_prompt="a photo of sks person", resolution=resolution,
                      crop=crop)
    screening._CACHE.clear()
    photos._KEPT.clear()
    first = timed(lambda: screening.screen_task(cfg))
    again = timed(lambda: screening.screen_task(cfg))
    framing = Framing(crop, resolution, 64)
    load = timed(lambda: load_images(folder, prompt="p", resolution=resolution, max_pixels=10**8, framing=framing))
    return {"screen": first[0] / count, "screen cpu": first[1] / count, "again": again[0] / count,
            "load": load[0] / count, "load cpu": load[1] / count}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=4, help="photos per format (default: 4)")
    p.add_argument("--side", type=int, default=4032, help="long side in pixels (default: 4032, a 12 MP phone photo)")
    p.add_argument("--workdir", type=Path, default=Path("build/bench-photos"))
    a = p.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"{a.count} photos of {a.side}x{a.side * 3 // 4} per format, seconds per photo (wall, and CPU of all threads)")
    print(f"{'format':8s} {'training':16s} " + " ".join(f"{c:>10s}" for c in ("screen", "screen cpu", "again", "load",
                                                                               "load cpu")))
    for fmt in ("JPEG", "HEIF"):
        folder = a.workdir / fmt.lower()
        write_photos(folder, a.count, a.side, fmt)
        for resolution, crop in ((512, "center"), (1024, "bucket")):
            row = bench(folder, a.count, resolution, crop)
            print(f"{fmt:8s} {f'{resolution} {crop}':16s} " + " ".join(f"{v:10.3f}" for v in row.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
