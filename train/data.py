"""Training images: loading with clear errors, captions, crops, and a data order that is a pure
function of (seed, step).

The order and every random draw of a step come from generators seeded by (seed, what, step),
not from a running RNG. That is what makes a killed and resumed run end with exactly the
same LoRA as an uninterrupted one: the resumed run needs no history to draw the same batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from train.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Example:
    path: Path
    image: "object"     # PIL RGB image, short side == resolution
    caption: str
    original_size: tuple[int, int] | None = None  # (height, width) before the resize (SDXL conditions on it)


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
                min_images: int = 1, what: str = "instance", limit: int | None = None) -> list[Example]:
    """Load every image of ``folder``, resized so its short side is ``resolution``.

    A ``NAME.txt`` beside ``NAME.jpg`` overrides the prompt of that image; the prompt (which
    holds the instance token) is put in front when the caption does not already contain it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} data: {folder} is not a folder")
    files = image_files(folder)
    if not files:
        raise DataError(f"{what} data: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if limit is not None:
        files = files[:limit]
    if len(files) < min_images:
        raise DataError(f"{what} data: {folder} holds {len(files)} image(s); at least {min_images} are needed "
                        f"(--min-images)")
    refuse_links_out(folder, files + [f.with_suffix(".txt") for f in files if f.with_suffix(".txt").is_file()], what)
    examples = []
    for f in files:
        image, original = open_image(f, resolution, max_pixels, with_original_size=True)
        examples.append(Example(f, image, caption_for(f, prompt), original_size=original))
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


def open_image(path: Path, resolution: int, max_pixels: int, *, with_original_size: bool = False):
    """Open, apply EXIF orientation, convert to RGB and resize the short side to ``resolution``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(f"{path}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                f"(--max-image-pixels); a decompression bomb or simply too large")
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: rejected as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    scale = resolution / min(im.size)
    size = (max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale)))
    resized = im.resize(size, Image.Resampling.BICUBIC)
    return (resized, (im.height, im.width)) if with_original_size else resized


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


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
    """(top, left, bottom, right) of the ``resolution`` square crop: centered, or drawn from ``rng``."""
    import torch

    im = example.image
    dx, dy = im.width - resolution, im.height - resolution
    if center_crop or rng is None:
        left, top = dx // 2, dy // 2
    else:
        left = int(torch.randint(0, dx + 1, (1,), generator=rng))
        top = int(torch.randint(0, dy + 1, (1,), generator=rng))
    return top, left, top + resolution, left + resolution


def to_tensor(example: Example, resolution: int, *, center_crop: bool, random_flip: bool, rng=None,
              crop: tuple[int, int] | None = None):
    """Crop to ``resolution`` (at ``crop`` = (top, left), centered, or at an offset drawn from
    ``rng``), maybe flip; CHW in [-1, 1]."""
    import numpy as np
    import torch

    im = example.image
    if crop is None:
        top, left = crop_box(example, resolution, center_crop=center_crop, rng=rng)[:2]
    else:
        top, left = crop
    im = im.crop((left, top, left + resolution, top + resolution))
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
