#!/usr/bin/env python3
"""Run a diffusers reference training script unmodified and time its optimizer steps.

    python scripts/bench_reference.py --json OUT.json -- REFERENCE.py --reference-args ...

The reference (e.g. diffusers' ``examples/dreambooth/train_dreambooth_lora_sdxl.py``, fetched
by the user; never vendored here) runs in this process through ``runpy`` with its own argv.
Its training loop calls ``progress_bar.update(1)`` once per optimizer step; a hook on tqdm's
``update`` records a timestamp there, which is the per-step clock. Written to ``--json``:
the step timestamps (wall clock and process CPU time), peak RSS and, on CUDA, ``torch.cuda.max_memory_allocated``.

torchvision: the reference imports it for its dataset transforms, which run once while the
dataset is built (before the timed loop). PyPI has no CPU build of torchvision for torch
2.13.0+cpu (the 0.28.0 wheel needs libtorch_cuda.so), so when ``import torchvision`` fails,
a small stand-in with the seven transforms the script uses (PIL + numpy) is put on the path
for this process only, and the result says so (``torchvision: "stand-in"``).
"""

from __future__ import annotations

import argparse
import json
import resource
import runpy
import sys
import tempfile
import time
from pathlib import Path

STAND_IN = '''"""Bench-only stand-in for the torchvision transforms diffusers' DreamBooth scripts use."""
import enum, random
import numpy as np
import torch
from PIL import Image

class InterpolationMode(enum.Enum):
    NEAREST = "nearest"; BILINEAR = "bilinear"; BICUBIC = "bicubic"; LANCZOS = "lanczos"

_PIL = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}

class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.mode = size, _PIL[interpolation.value]
    def __call__(self, im):
        s = self.size / min(im.size)
        return im.resize((round(im.width * s), round(im.height * s)), self.mode)

def crop(im, top, left, height, width):
    return im.crop((left, top, left + width, top + height))

class CenterCrop:
    def __init__(self, size):
        self.size = size
    def __call__(self, im):
        top, left = int(round((im.height - self.size) / 2.0)), int(round((im.width - self.size) / 2.0))
        return crop(im, top, left, self.size, self.size)

class RandomCrop(CenterCrop):
    @staticmethod
    def get_params(im, output_size):
        h, w = output_size
        return random.randint(0, im.height - h), random.randint(0, im.width - w), h, w
    def __call__(self, im):
        return crop(im, *self.get_params(im, (self.size, self.size)))

class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p
    def __call__(self, im):
        return im.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else im

class ToTensor:
    def __call__(self, im):
        return torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0

class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean[0], std[0]
    def __call__(self, t):
        return (t - self.mean) / self.std

class Compose:
    def __init__(self, steps):
        self.steps = steps
    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x
'''


# torchvision.transforms.functional as the FLUX.2 Klein script uses it (TF.resize, ...).
FUNCTIONAL = '''from PIL import Image
from . import crop, _PIL, CenterCrop, ToTensor, Normalize

def resize(im, size, interpolation=None):
    h, w = size
    return im.resize((w, h), _PIL[interpolation.value] if interpolation is not None else Image.BILINEAR)

def center_crop(im, size):
    return CenterCrop(size if isinstance(size, int) else size[0])(im)

def hflip(im):
    return im.transpose(Image.FLIP_LEFT_RIGHT)

def to_tensor(im):
    return ToTensor()(im)

def normalize(t, mean, std):
    return Normalize(mean, std)(t)
'''


def peak_rss_mib() -> float:
    """This process's peak resident set size. VmHWM, not ru_maxrss: a forked child's ru_maxrss
    starts at its parent's size, so a benchmark's child would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def ensure_torchvision() -> str:
    try:
        import torchvision  # noqa: F401

        return "installed"
    except Exception:  # absent, or a CUDA build that cannot load on a CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    # transformers and diffusers decide once (cached) whether torchvision is there: let them see
    # it absent, so only the reference's own `from torchvision import transforms` finds the stand-in.
    import diffusers.utils.import_utils  # noqa: F401
    import transformers.image_utils  # noqa: F401
    from transformers.utils import is_torchvision_available

    is_torchvision_available()
    root = Path(tempfile.mkdtemp(prefix="tv-stand-in-")) / "torchvision"
    (root / "transforms").mkdir(parents=True)
    (root / "__init__.py").write_text("from . import transforms\n")
    (root / "transforms" / "__init__.py").write_text(STAND_IN + "\nfrom . import functional\n")
    (root / "transforms" / "functional.py").write_text(FUNCTIONAL)
    sys.path.insert(0, str(root.parent))
    return "stand-in"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, required=True, help="where to write the timings")
    p.add_argument("reference", type=Path, help="the reference training script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    a = p.parse_args()
    torchvision = ensure_torchvision()
    import torch
    import tqdm.auto

    stamps: list[float] = []
    cpu_stamps: list[float] = []
    original = tqdm.auto.tqdm.update

    def update(self, n=1):  # the reference's progress bar ticks once per optimizer step
        if getattr(self, "desc", "") == "Steps":
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
        return original(self, n)

    tqdm.auto.tqdm.update = update
    sys.argv = [str(a.reference), *a.args]
    t0 = time.perf_counter()
    runpy.run_path(str(a.reference), run_name="__main__")
    result = {"stamps": stamps, "cpu_stamps": cpu_stamps, "seconds": time.perf_counter() - t0, "torchvision": torchvision,
              "peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    a.json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
