"""Phone-like photos the tests write with the libraries themselves, and real photographs.

- ``photo(name)``: a real photograph from scikit-image's wheel (``skimage/data``), read from
  the installed package (test data only, never copied into the repository).
- ``display_p3()``: an ICC profile of Display P3 (the iPhone camera's colour space): littleCMS's
  own sRGB profile (``ImageCms.createProfile``) with its colorants replaced by P3's primaries,
  adapted to D50 with Bradford as ICC v4 asks (the same steps reproduce sRGB's own colorants
  to 1e-5, which ``srgb_colorants_error`` returns).
- ``cmyk_profile()``: a small CMYK output profile (ICC v2, an A2B0 ``lut16`` from CMYK to Lab)
  of press inks on a warm paper: its cyan is (0, 158, 224)-ish, not the (0, 255, 255) a naive
  conversion makes of it.
- ``write_corpus(folder)``: one photo per format (JPEG, PNG, WebP, HEIC, AVIF, MPO), each
  stored turned on its side with EXIF orientation 6 ("rotate 90 clockwise to display"), plus
  a Display P3 JPEG, a CMYK JPEG with its profile and a 16-bit greyscale PNG.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "motorcycle_left", "brick", "grass", "gravel", "moon")
P3 = [(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)]
SRGB = [(0.640, 0.330), (0.300, 0.600), (0.150, 0.060)]
D65 = (0.3127, 0.3290)
D50 = np.array([0.9642, 1.0, 0.8249])


def photo(name: str):
    """A real photograph from scikit-image's data folder, as an RGB PIL image."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    path = next(p for p in (folder / f"{name}.png", folder / f"{name}.jpg") if p.is_file())
    return Image.open(path).convert("RGB")


# --- Display P3 -----------------------------------------------------------------------------

def _colorants(primaries) -> np.ndarray:
    """Columns = the D50-adapted XYZ of the red, green and blue primaries (white D65)."""
    xyz = lambda x, y: np.array([x / y, 1.0, (1 - x - y) / y])  # noqa: E731
    prims = np.stack([xyz(*p) for p in primaries], axis=1)
    white = xyz(*D65)
    matrix = prims * np.linalg.solve(prims, white)
    bradford = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
    adapt = np.linalg.inv(bradford) @ np.diag((bradford @ D50) / (bradford @ white)) @ bradford
    return adapt @ matrix


def _tags(icc: bytes) -> dict[bytes, tuple[int, int]]:
    count = struct.unpack(">I", icc[128:132])[0]
    return {sig: (off, size) for sig, off, size in
            (struct.unpack(">4sII", icc[132 + 12 * i:144 + 12 * i]) for i in range(count))}


def _srgb_bytes() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def srgb_colorants_error() -> float:
    """How far these steps put sRGB's colorants from the ones littleCMS wrote (a check of the maths)."""
    icc, tags = _srgb_bytes(), _tags(_srgb_bytes())
    stored = np.stack([np.array(struct.unpack(">iii", icc[tags[s][0] + 8:tags[s][0] + 20])) / 65536
                       for s in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
    return float(np.abs(stored - _colorants(SRGB)).max())


def display_p3() -> bytes:
    icc = bytearray(_srgb_bytes())
    tags = _tags(bytes(icc))
    for k, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ")):
        off = tags[sig][0]
        icc[off + 8:off + 20] = struct.pack(">iii", *(round(v * 65536) for v in _colorants(P3)[:, k]))
    icc[24:36] = bytes(12)   # the creation time littleCMS wrote: the same profile every call
    icc[84:100] = bytes(16)  # the profile ID (an MD5 of the old contents): unset
    return bytes(icc)


def p3_to_srgb_by_matrix(rgb) -> np.ndarray:
    """Independent of littleCMS: P3 -> linear -> XYZ -> linear sRGB -> sRGB (both D65), 0..255."""
    def linear(v):
        return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)

    def encode(v):
        v = np.clip(v, 0, 1)
        return np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)

    xyz = lambda x, y: np.array([x / y, 1.0, (1 - x - y) / y])  # noqa: E731

    def to_xyz(prims):
        m = np.stack([xyz(*p) for p in prims], axis=1)
        return m * np.linalg.solve(m, xyz(*D65))

    out = np.linalg.solve(to_xyz(SRGB), to_xyz(P3) @ linear(np.asarray(rgb, float) / 255))
    return encode(out) * 255


# --- CMYK -----------------------------------------------------------------------------------

def _linear(rgb) -> np.ndarray:
    v = np.asarray(rgb, float) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    """Linear sRGB (0..1) -> CIE Lab (D50), through the D50 colorants."""
    xyz = _colorants(SRGB) @ linear / D50
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


# Press inks on a warm paper, as sRGB: real cyan is far from (0, 255, 255), what a naive
# CMYK -> RGB conversion makes of it.
PAPER, INKS = (246, 243, 235), {"c": (0, 158, 224), "m": (236, 0, 140), "y": (255, 242, 0), "k": (35, 31, 32)}


def cmyk_profile() -> bytes:
    """ICC v2 output profile, CMYK -> Lab by a 2-point-per-ink lut16: each corner is the paper
    times the reflectance of the inks on it (subtractive mixing), multilinear in between."""
    paper = _linear(PAPER)
    grid = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    linear = paper.copy()
                    for ink, on in zip("cmyk", (c, m, y, k)):
                        if on:
                            linear = linear * _linear(INKS[ink]) / paper
                    L, a, b = _lab(linear)
                    grid.append((round(L * 652.8), round((a + 128) * 256), round((b + 128) * 256)))
    ramp = [0, 65535]
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0])
    lut += b"".join(struct.pack(">i", v) for v in (65536, 0, 0, 0, 65536, 0, 0, 0, 65536))
    lut += struct.pack(">HH", 2, 2) + struct.pack(">8H", *(ramp * 4))
    lut += b"".join(struct.pack(">3H", *(min(65535, max(0, v)) for v in g)) for g in grid)
    lut += struct.pack(">6H", *(ramp * 3))
    wtpt = b"XYZ " + bytes(4) + struct.pack(">3i", *(round(v * 65536) for v in D50))
    desc_text = b"test CMYK on warm paper\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(desc_text)) + desc_text + bytes(4 + 4 + 2 + 1 + 67)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", lut)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += struct.pack(">4sII", sig, offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s12s4s4sI4s4s8sI12s4s16s28s", size, b"lcms", 0x02100000, b"prtr", b"CMYK",
                         b"Lab ", bytes(12), b"acsp", b"APPL", 0, b"none", b"none", bytes(8), 0,
                         struct.pack(">3i", *(round(v * 65536) for v in D50)), b"lcms", bytes(16), bytes(28))
    return header + struct.pack(">I", len(tags)) + table + body


# --- the corpus -------------------------------------------------------------------------------

P3_PURE_RED, P3_GREEN = (255, 0, 0), (120, 180, 60)   # pure red clips to sRGB's red; the green moves far
ROTATED = {"rotated.jpg": "JPEG", "rotated.png": "PNG", "rotated.webp": "WEBP", "rotated.heic": "HEIF",
           "rotated.avif": "AVIF", "burst.jpg": "MPO"}
UPRIGHT = (48, 72)     # (width, height) of every photo as it is shown: portrait
MARK = (230, 20, 30)   # a red band across the top of the shown photo


def upright_photo(source: str):
    """A portrait crop of a real photo with a red band on top (so a wrong turn shows)."""
    from PIL import Image

    im = photo(source)
    side = min(im.size)
    im = im.crop((0, 0, side * 2 // 3, side)).resize(UPRIGHT, Image.Resampling.LANCZOS)
    im.paste(MARK, (0, 0, UPRIGHT[0], UPRIGHT[1] // 6))
    return im


def write_corpus(folder: Path) -> dict[str, str]:
    """{file name: what it is}: every format stored sideways with EXIF orientation 6, and the
    colour cases (Display P3, CMYK with a profile, 16-bit grey)."""
    from PIL import Image

    import pillow_heif

    pillow_heif.register_heif_opener()
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    sources = iter(SKIMAGE_PHOTOS[1:])
    for name, fmt in ROTATED.items():
        stored = upright_photo(next(sources)).transpose(Image.Transpose.ROTATE_90)  # as the sensor saw it
        kwargs = {"exif": exif.tobytes(), "quality": 95}
        if fmt == "MPO":  # a second, different frame: only the first (primary) one may be read
            kwargs.update(save_all=True, append_images=[Image.new("RGB", stored.size, (0, 255, 0))])
        stored.save(folder / name, fmt, **kwargs)
    p3 = photo("astronaut").crop((120, 0, 376, 256)).resize((64, 64))
    p3.paste(P3_PURE_RED, (0, 0, 32, 16))   # flat patches: pure red, and a green far from its sRGB value
    p3.paste(P3_GREEN, (32, 0, 64, 16))
    p3.save(folder / "p3.jpg", quality=100, subsampling=0, icc_profile=display_p3())
    cmyk = photo("coffee").resize((72, 48)).convert("CMYK")
    cmyk.paste((255, 0, 0, 0), (0, 0, 24, 16))        # solid cyan ink in the top-left corner
    cmyk.save(folder / "cmyk.jpg", quality=100, icc_profile=cmyk_profile())
    grey = np.asarray(photo("camera").convert("L").resize((64, 64)), np.uint16) * 257
    Image.fromarray(grey.astype(np.uint16)).save(folder / "grey16.png")   # mode I;16
    return {**{n: f"{f} turned with EXIF" for n, f in ROTATED.items()}, "p3.jpg": "Display P3 JPEG",
            "cmyk.jpg": "CMYK JPEG with profile", "grey16.png": "16-bit grey PNG"}
