"""What the screening and the face crop measure in a photo, with OpenCV.

Every measure runs on one small greyscale copy of the photo (short side ``ANALYSIS_SIDE``),
so its numbers mean the same for a 12-megapixel phone photo and a 600-pixel one, and the
whole set is measured in well under a second per photo on one CPU core.

- **Perceptual hash** (pHash): the sign pattern of the 8x8 lowest frequencies of the DCT of a
  32x32 copy, against their median; near-duplicates (re-encoded, resized, recompressed,
  slightly cropped) differ in few of the 64 bits. OpenCV's ``img_hash`` module lives in the
  contrib build, which the locked ``opencv-python-headless`` does not include, and no hashing
  library is in the lock, so it is these few lines over ``cv2.dct`` (the same steps as the
  ``imagehash`` package's ``phash``).
- **Sharpness**: the variance of the Laplacian (Pech-Pacheco et al. 2000), the standard
  blur measure: a blurred photo has few edges and a low value.
- **Faces**: OpenCV 4's Haar cascade ``haarcascade_frontalface_alt2.xml`` (shipped inside the
  wheel under ``cv2.data``; OpenCV 5 wheels no longer ship the cascades). Of the three
  frontal cascades it counted the four faces of a 2x2 group photo without extra detections.
  Faces smaller than ``MIN_FACE`` of the short side are people in the background, not the
  subject, and are not counted.
"""

from __future__ import annotations

import functools
from typing import Sequence

ANALYSIS_SIDE = 512      # short side of the copy every measure runs on
MIN_FACE = 0.08          # smallest face counted, as a fraction of the photo's short side
CASCADE = "haarcascade_frontalface_alt2.xml"

Box = tuple[float, float, float, float]   # (left, top, right, bottom), fractions of width / height


def analysis_grey(image):
    """A greyscale uint8 array of the RGB PIL ``image``, short side at most ``ANALYSIS_SIDE``."""
    import cv2
    import numpy as np

    grey = np.asarray(image.convert("L"))
    h, w = grey.shape
    scale = ANALYSIS_SIDE / min(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return grey


def perceptual_hash(grey) -> int:
    """64-bit pHash of a greyscale array."""
    import cv2
    import numpy as np

    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low)
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """How many of the 64 hash bits differ."""
    return (a ^ b).bit_count()


def sharpness(grey) -> float:
    """Variance of the Laplacian of a greyscale array (higher = sharper)."""
    import cv2

    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def faces(grey) -> list[Box]:
    """Frontal faces in a greyscale array, as boxes in fractions of its width and height,
    largest first."""
    h, w = grey.shape
    side = max(24, round(min(h, w) * MIN_FACE))    # 24 px: the cascade's own window
    found = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    boxes = [(x / w, y / h, (x + bw) / w, (y + bh) / h) for x, y, bw, bh in (tuple(map(int, f)) for f in found)]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def union(boxes: Sequence[Box]) -> Box | None:
    """The smallest box holding every box (the face crop keeps all detected faces)."""
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


@functools.cache
def _cascade():
    import cv2

    from train.errors import TrainError

    path = cv2.data.haarcascades + CASCADE
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():  # an OpenCV build without the cascade files (OpenCV 5 wheels)
        raise TrainError(f"OpenCV's Haar cascade {path} is missing; install opencv-python-headless 4.x")
    return classifier
