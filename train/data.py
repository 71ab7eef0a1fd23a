"""Training images: loading with clear errors, captions, crops, and a data order that is a pure
function of (seed, step).

Photos are read by ``train/photos.py`` (formats, orientation, colour), placed by the task's
``crop`` setting (``train/crops.py``: centre, face or aspect-ratio bucket), and screened before
any of this by ``train/screen.py``. The order and every random draw of a step come from
generators seeded by (seed, what, step), not from a running RNG. That is what makes a killed
and resumed run end with exactly the same LoRA as an uninterrupted one: the resumed run needs
no history to draw the same batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from train.errors import DataError
from train.photos import IMAGE_SUFFIXES


@dataclass
class Example:
    path: Path
    image: "object"     # PIL RGB image covering ``size`` (short side == resolution for square crops)
    caption: str
    original_size: tuple[int, int] | None = None  # (height, width) before the resize (SDXL conditions on it)
    size: tuple[int, int] | None = None           # (height, width) trained at: the bucket; None = the square
    focus: tuple[int, int, int, int] | None = None  # (top, left, bottom, right) a crop keeps: the faces

    def target(self, resolution: int) -> tuple[int, int]:
        """(height, width) of this image's training crop."""
        return self.size or (resolution, resolution)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels, e.g. ``derive_seed(0, "noise", 17)``."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, *parts: object):
    import torch

    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, *parts))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(folder: str | Path, *, prompt: str, resolution: int, max_pixels: int,
                min_images: int = 1, what: str = "instance", limit: int | None = None,
                files: Sequence[Path] | None = None, framing=None) -> list[Example]:
    """Load every image of ``folder`` (or the ``files`` screening kept), each placed by
    ``framing`` (a ``train.crops.Framing``; default: short side resized to ``resolution``).

    A ``NAME.txt`` beside ``NAME.jpg`` overrides the prompt of that image; the prompt (which
    holds the instance token) is put in front when the caption does not already contain it.
    """
    from train.crops import Framing

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} data: {folder} is not a folder")
    files = image_files(folder) if files is None else list(files)
    if not files:
        raise DataError(f"{what} data: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if limit is not None:
        files = files[:limit]
    if len(files) < min_images:
        raise DataError(f"{what} data: {folder} holds {len(files)} image(s); at least {min_images} are needed "
                        f"(--min-images)")
    refuse_links_out(folder, files + [f.with_suffix(".txt") for f in files if f.with_suffix(".txt").is_file()], what)
    framing = framing or Framing(resolution=resolution)
    examples = []
    for f in files:
        photo = open_image(f, framing, max_pixels)
        image, size, focus = framing.place(photo, f.name)
        width, height = photo.info.get("original_size", photo.size)   # before any reduced decode
        examples.append(Example(f, image, caption_for(f, prompt), original_size=(height, width),
                                size=None if size == (resolution, resolution) else size, focus=focus))
    return examples


def refuse_links_out(folder: Path, files: list[Path], what: str = "instance") -> None:
    """A file that is a symlink to somewhere outside ``folder`` would let one task read
    another user's images or the host's files (a folder that leaves its channel is refused
    where the container resolves it); refused, naming the file."""
    base = folder.resolve()
    for f in files:
        if f.is_symlink() and base not in f.resolve().parents:
            raise DataError(f"{what} data: {f} is a symlink to a file outside {folder}; "
                            "put the file itself in the folder")


def open_image(path: Path, framing, max_pixels: int):
    """The upright sRGB photo, decoded no larger than ``framing`` needs where the format allows
    (JPEG's DCT scaling: a 12-megapixel photo for a 512-pixel crop decodes at a quarter)."""
    from train.photos import open_at_least

    return open_at_least(path, max_pixels, framing.largest_side())  # enough for any orientation and bucket


def caption_for(image_path: Path, prompt: str) -> str:
    txt = image_path.with_suffix(".txt")
    if not txt.is_file():
        return prompt
    try:
        caption = " ".join(txt.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{txt}: unreadable caption ({exc})") from None
    if not caption:
        return prompt
    return caption if prompt in caption else f"{prompt}, {caption}"


def crop_box(example: Example, resolution: int, *, center_crop: bool, rng=None) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the training crop (``example.target``): centred (on the faces
    when it has a focus), or drawn from ``rng`` within the offsets that keep the focus."""
    import torch

    from train.crops import span

    th, tw = example.target(resolution)
    im, focus = example.image, example.focus
    low_x, high_x, mid_x = span(im.width - tw, tw, (focus[1], focus[3]) if focus else None)
    low_y, high_y, mid_y = span(im.height - th, th, (focus[0], focus[2]) if focus else None)
    if center_crop or rng is None:
        left, top = mid_x, mid_y
    else:
        left = low_x + int(torch.randint(0, high_x - low_x + 1, (1,), generator=rng))
        top = low_y + int(torch.randint(0, high_y - low_y + 1, (1,), generator=rng))
    return top, left, top + th, left + tw


def to_tensor(example: Example, resolution: int, *, center_crop: bool, random_flip: bool, rng=None,
              crop: tuple[int, int] | None = None):
    """Crop to the example's target (at ``crop`` = (top, left), centred, or at an offset drawn
    from ``rng``), maybe flip; CHW in [-1, 1]."""
    import numpy as np
    import torch

    im = example.image
    th, tw = example.target(resolution)
    if crop is None:
        top, left = crop_box(example, resolution, center_crop=center_crop, rng=rng)[:2]
    else:
        top, left = crop
    im = im.crop((left, top, left + tw, top + th))
    pixels = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
    if random_flip and rng is not None and float(torch.rand((1,), generator=rng)) < 0.5:
        pixels = pixels.flip(-1)
    return pixels


def batch_indices(seed: int, kind: str, micro_step: int, batch_size: int, n: int) -> list[int]:
    """Indices of the examples of micro-batch ``micro_step``: epochs of seeded permutations."""
    import torch

    out = []
    for j in range(batch_size):
        position = micro_step * batch_size + j
        epoch, within = divmod(position, n)
        order = torch.randperm(n, generator=generator(seed, kind, "epoch", epoch))
        out.append(int(order[within]))
    return out
