"""The scores, computed from files: the evaluation PNGs as saved and the instance photos as uploaded.

Every embedding is L2-normalised, so a dot product is a cosine. With S the subject images,
R the instance photos, and (B_k, L_k) the drift pairs (same prompt and seed, without and with
the LoRA):

    dino      mean over (s, r) in S x R of cos(DINO(s), DINO(r))      DreamBooth's DINO
    clip_i    the same with CLIP image embeddings                     DreamBooth's CLIP-I
    clip_t    mean over s of cos(CLIP(s), CLIP_text(prompt(s) without the rare token))
    drift     mean over k of (1 - cos(DINO(B_k), DINO(L_k))) / 2      PEFT's drift, 0..1
    copying   max over (s, r) of cos(DINO(s), DINO(r)), with the photo it is nearest to
    identity  mean over s with a face of cos(face(s), centroid of the photos' faces), where
              face() is the embedding of an image's largest face and a centroid is the
              normalised mean; each photo also gets cos(face(r), centroid of the others)
              (leave-one-out), which flags a photo of somebody else

Nothing here renders: ``python -m train.quality`` recomputes the same numbers from the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from train.quality.gate import SCORES

DIGITS = 4
MAX_SIDE = 2048


@dataclass(frozen=True)
class Image:
    path: Path            # absolute
    prompt: str
    seed: int
    kind: str             # subject | drift_base | drift_lora


@dataclass
class Result:
    scores: dict[str, Any]
    unmeasured: dict[str, str] = field(default_factory=dict)   # score -> why it is null
    nearest: dict[str, Any] | None = None                      # the copying pair
    photos: list[dict[str, Any]] = field(default_factory=list)  # per instance photo: faces, identity_loo


# -- the formulas (numpy arrays of normalised rows) -------------------------------------------

def mean_cosine(a, b) -> float:
    return float((a @ b.T).mean())


def paired_drift(base, lora) -> float:
    return float(((1.0 - (base * lora).sum(axis=1)) / 2.0).mean())


def nearest_pair(a, b) -> tuple[float, int, int]:
    """(highest cosine, row of a, row of b)."""
    import numpy as np

    sim = a @ b.T
    i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
    return float(sim[i, j]), int(i), int(j)


def centroid(rows):
    import numpy as np

    mean = np.mean(rows, axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def leave_one_out(rows) -> list[float | None]:
    """cos(row i, centroid of the other rows); None when there is no other row."""
    if len(rows) < 2:
        return [None] * len(rows)
    return [float(rows[i] @ centroid([r for k, r in enumerate(rows) if k != i])) for i in range(len(rows))]


# -- from files ---------------------------------------------------------------------------------

def read_rgb(path: Path, max_pixels: int = 64_000_000):
    """A photo as a user sees it and training reads it (train.photos: every format, EXIF rotation,
    colour through its ICC profile to sRGB). Above MAX_SIDE pixels it is reduced to MAX_SIDE (a
    48-megapixel upload would hold 150 MB per photo; every scorer looks at 640 px or less)."""
    from PIL import Image as PILImage

    from train.photos import open_photo

    rgb = open_photo(Path(path), max_pixels, draft=(MAX_SIDE, MAX_SIDE))
    if max(rgb.size) > MAX_SIDE:
        rgb = rgb.copy()  # open_photo may hand out a shared copy: never change it in place
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), PILImage.Resampling.LANCZOS)
    return rgb


def compute(scorers, images: Sequence[Image], photos: Sequence[Path], settings) -> Result:
    """Every score of ``images`` against ``photos`` (the scorers placed where they should run)."""
    subject = [im for im in images if im.kind == "subject"]
    real = [read_rgb(p) for p in photos]
    result = Result(scores=dict.fromkeys(SCORES))
    result.scores["faces_per_image"] = None
    if subject and real:
        _subject_scores(scorers, subject, real, photos, settings, result)
    else:
        why = "no subject image was rendered" if not subject else "no instance photo"
        result.unmeasured.update(dict.fromkeys(("dino", "clip_i", "clip_t", "copying"), why))
    _drift(scorers, images, result)
    if scorers.face is None:
        result.unmeasured["identity"] = "no face models (face/ in the scorer folder)"
    else:
        _identity(scorers.face, subject, real, photos, result)
    for name, value in result.scores.items():
        if isinstance(value, float):
            result.scores[name] = round(value, DIGITS)
    return result


def _subject_scores(scorers, subject, real, photos, settings, result: Result) -> None:
    generated = [read_rgb(im.path) for im in subject]
    dino_g, dino_r = scorers.dino_images(generated), scorers.dino_images(real)
    clip_g, clip_r = scorers.clip_images(generated), scorers.clip_images(real)
    texts = scorers.clip_texts([settings.clip_text(im.prompt) for im in subject])
    result.scores.update(dino=mean_cosine(dino_g, dino_r), clip_i=mean_cosine(clip_g, clip_r),
                         clip_t=float((clip_g * texts).sum(axis=1).mean()))
    value, i, j = nearest_pair(dino_g, dino_r)
    result.scores["copying"] = value
    result.nearest = {"image": subject[i].path, "photo": photos[j].name, "similarity": round(value, DIGITS)}


def _drift(scorers, images, result: Result) -> None:
    base = {(im.prompt, im.seed): im for im in images if im.kind == "drift_base"}
    pairs = [(base[(im.prompt, im.seed)], im) for im in images
             if im.kind == "drift_lora" and (im.prompt, im.seed) in base]
    if not pairs:
        result.unmeasured["drift"] = "no drift pair was rendered"
        return
    b = scorers.dino_images([read_rgb(p.path) for p, _ in pairs])
    lora = scorers.dino_images([read_rgb(q.path) for _, q in pairs])
    result.scores["drift"] = paired_drift(b, lora)


def _identity(face, subject, real, photos, result: Result) -> None:
    import numpy as np

    generated = [face.largest_face_embedding(np.asarray(read_rgb(im.path))) for im in subject]
    uploaded = [face.largest_face_embedding(np.asarray(im)) for im in real]
    result.scores["faces_per_image"] = [n for n, _ in generated]
    with_face = [e for _, e in uploaded if e is not None]
    loo = iter(leave_one_out(with_face))
    result.photos = [{"file": p.name, "faces": n, "identity_loo": _round(next(loo)) if e is not None else None}
                     for p, (n, e) in zip(photos, uploaded)]
    gen = [e for _, e in generated if e is not None]
    if not with_face:
        result.unmeasured["identity"] = f"no face found in any of the {len(photos)} instance photos"
    elif not gen:
        result.unmeasured["identity"] = f"no face found in any of the {len(subject)} subject images"
    else:
        result.scores["identity"] = float(np.mean(np.asarray(gen) @ centroid(with_face)))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)
