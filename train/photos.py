"""Reading a user's photo the way their phone shows it: upright, in sRGB, 8 bits per channel.

What phones and browsers upload, and what a plain ``Image.open(...).convert("RGB")`` gets wrong:

- HEIC/HEIF (the iPhone camera's default) through pillow-heif's Pillow opener; AVIF through
  Pillow itself (its wheels decode it from 11.3 on); MPO (multi-picture JPEGs) as their first,
  primary frame; JPEG, PNG and WebP as before.
- Orientation: the EXIF tag is applied (HEIF's own rotation boxes are applied by libheif, which
  then resets the tag, so nothing turns twice).
- Colour: pixels are converted through the embedded ICC profile to sRGB with littleCMS
  (Pillow's ImageCms), for RGB, CMYK and grey images alike. iPhone photos are Display P3:
  read as sRGB they come out desaturated and hue-shifted; a CMYK JPEG read naively has the
  wrong whites and blacks. A profile littleCMS cannot use is noted and the pixels are read as
  they are, rather than losing the photo.
- 16-bit greyscale (``I;16`` PNGs) is scaled to 8 bits; a plain convert clips it to white.
- Transparent pixels go on white.

The decompression-bomb guard reads the size from the file's header, before any pixel is
decoded, for every format. Every error names the file.
"""

from __future__ import annotations

import functools
import io
import sys
from collections import OrderedDict
from pathlib import Path

from train.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif")
# 16-bit integer modes Pillow gives greyscale images of more than 8 bits (PNG, TIFF, PGM).
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@functools.cache
def register_formats() -> None:
    """Teach Pillow HEIC/HEIF (once per process; AVIF is Pillow's own)."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def pixel_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding pixels; refuses a file over
    ``max_pixels`` (a decompression bomb, or simply too large) and an unreadable one."""
    with _opened(path, max_pixels) as im:
        return im.size


def open_photo(path: Path, max_pixels: int, *, draft: tuple[int, int] | None = None, keep_side: int = 0):
    """The photo as an upright sRGB ``RGB`` image; ``image.info["original_size"]`` is its full
    upright (width, height). ``draft`` = (width, height) asks for a decode no smaller than that
    where the format can do it cheaply (JPEG's DCT scaling). ``keep_side``: keep a copy with at
    least this short side for the next reader of a format that must be decoded whole (HEIC,
    AVIF, PNG, WebP): the screening's decode then serves the training's too."""
    from PIL import Image, ImageOps

    key = file_key(path)
    kept = _KEPT.get(key)
    if kept is not None and draft is not None and min(kept.size) >= min(draft):
        if not keep_side:                       # training's read: the copy has served its purpose
            del _KEPT[key]
        return kept                             # callers never change an image in place
    with _opened(path, max_pixels) as im:
        try:
            stored = im.size
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)                      # MPO / animated: the primary (first) frame
            drafted = bool(draft) and im.format in DRAFTABLE
            if drafted:
                im.draft(im.mode, draft)
            im.load()
            decoded = im.size
            upright = ImageOps.exif_transpose(im)
            photo = to_srgb(upright, path)
        except (Image.DecompressionBombError, MemoryError) as exc:
            raise DataError(f"{path}: rejected as a decompression bomb ({exc})") from None
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders (libjpeg, libheif, libavif, EXIF parsing)
            # raise what they like on a broken file; it is this photo's error, never the host's.
            raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    turned = photo.size == decoded[::-1] and decoded[0] != decoded[1]
    photo.info["original_size"] = stored[::-1] if turned else stored
    if keep_side and not drafted:
        _keep(key, photo, keep_side)
    return photo


def open_at_least(path: Path, max_pixels: int, short_side: int, *, keep_side: int = 0):
    """``open_photo`` decoded no smaller than ``short_side`` on the short side where the format
    allows (JPEG: 1/2, 1/4, 1/8 scale), whole otherwise; a copy the screening kept serves it."""
    w, h = pixel_size(path, max_pixels)
    scale = min(1.0, short_side / max(1, min(w, h)))
    return open_photo(path, max_pixels, draft=(max(1, round(w * scale)), max(1, round(h * scale))),
                      keep_side=keep_side)


# Decoded copies of photos that cannot be decoded small (see open_photo's keep_side), reduced to
# what training needs; a byte budget bounds them (a 1024-px bucket task keeps ~10 MB a photo).
DRAFTABLE = ("JPEG", "MPO")
KEEP_BYTES = 1 << 30
_KEPT: "OrderedDict[tuple, object]" = OrderedDict()


def _keep(key: tuple, photo, side: int) -> None:
    from PIL import Image

    scale = side / min(photo.size)
    if scale < 1:
        info = photo.info
        photo = photo.resize((max(side, round(photo.width * scale)), max(side, round(photo.height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
        photo.info.update(info)
    _KEPT[key] = photo
    while sum(im.width * im.height * 3 for im in _KEPT.values()) > KEEP_BYTES and len(_KEPT) > 1:
        _KEPT.popitem(last=False)


def file_key(path: Path) -> tuple:
    """What identifies a photo's content for the caches: its real path, size and mtime."""
    try:
        stat = Path(path).stat()
    except OSError:
        return (str(path),)             # _opened reports the problem, naming the file
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


class _opened:
    """``Image.open`` with the header checks: readable, and not over ``max_pixels``."""

    def __init__(self, path: Path, max_pixels: int):
        self.path, self.max_pixels = Path(path), max_pixels
        self.im = None

    def __enter__(self):
        from PIL import Image

        register_formats()
        path = self.path
        try:
            self.im = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise DataError(f"{path}: rejected as a decompression bomb ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, or whatever a plugin raises
            raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc}); readable formats: "
                            f"{', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}") from None
        w, h = self.im.size
        if w * h > self.max_pixels:
            self.im.close()
            raise DataError(f"{path}: {w}x{h} = {w * h} pixels is over the limit of {self.max_pixels} "
                            f"(--max-image-pixels); a decompression bomb or simply too large")
        return self.im

    def __exit__(self, *exc) -> None:
        if self.im is not None:
            self.im.close()


# --- colour --------------------------------------------------------------------------------

def to_srgb(im, path: Path | str = "<image>"):
    """``im`` as 8-bit sRGB ``RGB``: 16-bit grey scaled, transparency composited on white, then
    converted through its ICC profile (when it has one) with littleCMS."""
    from PIL import Image

    icc = im.info.get("icc_profile")
    if im.mode in SIXTEEN_BIT:
        im = _sixteen_to_eight(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        # Composite in the photo's own colour space: its white is the profile's white.
        grey = im.mode in ("LA", "La")
        rgba = im.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        im = flat.convert("L") if grey else flat
    elif im.mode not in ("RGB", "CMYK", "L"):
        im = im.convert("RGB")          # P, 1, YCbCr ...: their values are in the profile's space already
    if icc:
        converted = _through_profile(im, icc, path)
        if converted is not None:
            return converted
    return im.convert("RGB")


def _sixteen_to_eight(im):
    """16-bit grey to 8-bit ``L`` by value / 257 (65535 -> 255), not by clipping at 255."""
    import numpy as np
    from PIL import Image

    values = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")


def _through_profile(im, icc: bytes, path):
    from PIL import ImageCms

    try:
        transform = _transform(bytes(icc), im.mode)
        return ImageCms.applyTransform(im, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        print(f"note: {path}: its colour profile cannot be applied ({exc}); read as sRGB", file=sys.stderr,
              flush=True)
        return None


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str):
    """One littleCMS transform per (profile, mode): a set of photos from one phone shares it."""
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    # Perceptual: LUT-based (CMYK) profiles map their gamut gently; matrix profiles (Display P3)
    # have no perceptual table and littleCMS uses relative colorimetric for them.
    return ImageCms.buildTransform(source, _srgb(), mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL)


@functools.cache
def _srgb():
    from PIL import ImageCms

    return ImageCms.createProfile("sRGB")
