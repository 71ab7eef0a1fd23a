"""Thumbnails embedded in the pages as data URIs (Pillow), so a page downloaded alone still shows them.

WebP at a modest quality keeps a 128 px preview near 3-6 KB, which is what lets a 500-task
job page stay a few MB. An image that cannot be decoded becomes None (the page says so)
rather than failing the page.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

TASK_THUMB = 160      # px, longest side: the task page's preview grid and evaluation images
ROW_THUMB = 72        # px: one per row of the job page
QUALITY = 72
MIN_SHOWN = 96        # px: a tiny preview (a 32 px test model's) is shown enlarged, not as a speck


@dataclass(frozen=True)
class Thumb:
    uri: str          # data:image/webp;base64,...
    width: int        # as shown on the page (CSS px)
    height: int
    href: str | None  # the full image, relative to the page, where it lies beside the page
    alt: str


def thumbnail(raw: bytes | None, size: int, *, href: str | None = None, alt: str = "") -> Thumb | None:
    """A data-URI thumbnail of the image in ``raw`` (None when missing or unreadable)."""
    if not raw:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.thumbnail((size, size))
            image = image.convert("RGB")
            out = io.BytesIO()
            image.save(out, format="WEBP", quality=QUALITY, method=4)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    uri = "data:image/webp;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    scale = max(1.0, min(size, MIN_SHOWN) / max(image.width, image.height))
    return Thumb(uri=uri, width=round(image.width * scale), height=round(image.height * scale), href=href, alt=alt)
