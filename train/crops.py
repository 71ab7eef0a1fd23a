"""How a photo becomes a training image (``crop``), and the batch order aspect-ratio buckets need.

- ``center``: the short side resized to ``resolution``, a square from the middle (as diffusers'
  DreamBooth scripts do); ``--no-center-crop`` draws the square's offset per step instead.
- ``face``: the same square, centred on the detected face(s) (``train/vision.py``), so a
  portrait keeps its head; without ``center_crop`` the drawn offsets keep the faces inside.
  A photo with no face found falls back to the centre, and the task says which.
- ``bucket``: the whole photo at the aspect-ratio bucket nearest its own, every bucket about
  ``resolution``² pixels with sides a multiple of what the model's latents need
  (``Family.size_multiple``), resized to cover it and the few pixels over trimmed from the
  middle, as kohya, SimpleTuner and SDXL's own training do. A non-square photo is trained
  whole instead of losing its sides. The denoiser sees each image's real size (SDXL's size
  and crop conditioning, FLUX's latent positions).

With buckets and a batch of more than one image, a batch must hold one size: ``bucket_batch``
is, like ``train.data.batch_indices``, a pure function of (seed, step), so exact resume holds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

CROPS = ("center", "face", "bucket")
MAX_ASPECT = 2.0       # buckets span 1:2 to 2:1; a wider photo loses its ends to the 2:1 bucket

Size = tuple[int, int]     # (height, width), as the denoiser and SDXL's time ids take it


@functools.lru_cache(maxsize=32)
def bucket_sizes(resolution: int, multiple: int) -> tuple[Size, ...]:
    """Every (height, width) with sides a multiple of ``multiple``, aspect between 1:2 and 2:1,
    and about ``resolution``² pixels (each width with the height nearest that area), tallest first."""
    area = resolution * resolution
    sizes = set()
    for w in range(multiple, 2 * resolution + multiple, multiple):
        h = round(area / w / multiple) * multiple
        if h > 0 and 1 / MAX_ASPECT <= w / h <= MAX_ASPECT:
            sizes.add((h, w))
    side = max(multiple, round(resolution / multiple) * multiple)
    sizes.add((side, side))
    return tuple(sorted(sizes, key=lambda s: (s[1] / s[0], s[0])))


def nearest_bucket(width: int, height: int, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is nearest (in log scale) the photo's; ties: the first."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda s: abs(math.log(s[1] / s[0]) - aspect))


@dataclass(frozen=True)
class Framing:
    """The ``crop`` setting applied to one task's photos."""

    mode: str = "center"
    resolution: int = 512
    multiple: int = 8                                   # the model's side multiple (buckets only)
    faces: Mapping[str, tuple] = field(default_factory=dict)   # file name -> face boxes (face mode)

    def target(self, width: int, height: int) -> Size:
        """(height, width) the photo trains at."""
        if self.mode == "bucket":
            return nearest_bucket(width, height, bucket_sizes(self.resolution, self.multiple))
        return self.resolution, self.resolution

    def largest_side(self) -> int:
        if self.mode == "bucket":
            return max(max(s) for s in bucket_sizes(self.resolution, self.multiple))
        return self.resolution

    def place(self, image, name: str):
        """(``image`` resized to cover its target, target (h, w), focus box or None): the focus is
        the faces' box as (top, left, bottom, right) in the resized image (face mode)."""
        from PIL import Image

        from train.vision import union

        w, h = image.size
        th, tw = self.target(w, h)
        scale = max(tw / w, th / h)
        size = (max(tw, round(w * scale)), max(th, round(h * scale)))
        resized = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        box = union(self.faces.get(name) or ()) if self.mode == "face" else None
        focus = None
        if box is not None:
            W, H = size
            focus = (round(box[1] * H), round(box[0] * W), round(box[3] * H), round(box[2] * W))
        return resized, (th, tw), focus


def side_needed(mode: str, resolution: int) -> int:
    """A short side that serves every framing of ``mode`` (before the model's side multiple is
    known): a bucket's longest side is at most sqrt(MAX_ASPECT) x resolution, plus rounding."""
    if mode == "bucket":
        return math.ceil(resolution * math.sqrt(MAX_ASPECT) * 1.1)
    return resolution


def span(extra: int, length: int, focus: tuple[int, int] | None) -> tuple[int, int, int]:
    """(lowest, highest, centred) crop offset along one axis with ``extra`` pixels to spare;
    with a ``focus`` [start, end) the centred offset centres it and the range keeps it inside."""
    if focus is None:
        return 0, extra, extra // 2
    start, end = focus
    centred = min(max(round((start + end) / 2 - length / 2), 0), extra)
    low, high = max(0, end - length), min(extra, start)
    return (low, high, centred) if low <= high else (centred, centred, centred)


# --- batches of one bucket ---------------------------------------------------------------------

def bucket_batch(seed: int, kind: str, micro_step: int, batch_size: int, sizes: Sequence[Size]) -> list[int]:
    """Indices of micro-batch ``micro_step`` when each must hold one size: every epoch each
    bucket's images are shuffled and cut into batches (the last one topped up from the same
    bucket's start), and the epoch's batches are shuffled. A pure function of its arguments."""
    batches = _epoch_batches(seed, kind, batch_size, tuple(sizes), 0)
    epoch, within = divmod(micro_step, len(batches))
    return list(_epoch_batches(seed, kind, batch_size, tuple(sizes), epoch)[within])


@functools.lru_cache(maxsize=8)
def _epoch_batches(seed: int, kind: str, batch_size: int, sizes: tuple[Size, ...], epoch: int):
    import torch

    from train.data import generator

    members: dict[Size, list[int]] = {}
    for i, s in enumerate(sizes):
        members.setdefault(s, []).append(i)
    batches = []
    for size in sorted(members):
        group = members[size]
        order = torch.randperm(len(group), generator=generator(seed, kind, "bucket", size, epoch)).tolist()
        shuffled = [group[j] for j in order]
        count = math.ceil(len(shuffled) / batch_size) * batch_size
        padded = [shuffled[j % len(shuffled)] for j in range(count)]
        batches += [tuple(padded[k:k + batch_size]) for k in range(0, count, batch_size)]
    order = torch.randperm(len(batches), generator=generator(seed, kind, "batches", epoch)).tolist()
    return tuple(batches[j] for j in order)
