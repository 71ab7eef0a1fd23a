#!/usr/bin/env python3
"""Write synthetic DreamBooth data: a subject (a coloured shape) and class images, offline.

    python scripts/make_demo_data.py OUT_DIR [--count 6] [--class-count 0] [--size 96]
                                             [--captions] [--seed 0] [--phone-photos]

The subject is always the same red star-ish disc on a varying background, position and scale,
so a LoRA can actually learn it; class images are other shapes in other colours. Files are a
mix of jpg, png and webp, written to OUT_DIR/instance/ and OUT_DIR/class/. --phone-photos adds
what phones upload: a HEIC photo and a re-encoded near-duplicate (which screening catches).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

SUFFIXES = (".png", ".jpg", ".webp")


def _shape(draw, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "disc":
        draw.ellipse(box, fill=colour, outline=(40, 40, 40), width=max(1, (x1 - x0) // 12))
        cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 6
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 230, 0))   # the subject's "eye"
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def make_image(rng: random.Random, size: int, *, subject: bool):
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(120, 255) for _ in range(3))
    im = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(im)
    s = rng.randint(size // 3, size * 2 // 3)
    x, y = rng.randint(0, size - s), rng.randint(0, size - s)
    if subject:
        _shape(draw, "disc", (x, y, x + s, y + s), (210, 30, 40))
    else:
        kind = rng.choice(["disc", "square", "triangle"])
        _shape(draw, kind, (x, y, x + s, y + s), tuple(rng.randint(0, 255) for _ in range(3)))
    return im


def write_set(folder: Path, count: int, size: int, rng: random.Random, *, subject: bool,
              captions: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{'subject' if subject else 'class'}-{i:03d}{SUFFIXES[i % len(SUFFIXES)]}"
        make_image(rng, size, subject=subject).save(path, quality=95)
        if captions and i % 2 == 0:
            path.with_suffix(".txt").write_text(f"a sks toy on a plain background, view {i}\n")
        paths.append(path)
    return paths


def make_demo_data(out_dir: Path, *, count: int = 6, class_count: int = 0, size: int = 96,
                   captions: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    write_set(out_dir / "instance", count, size, rng, subject=True, captions=captions)
    if class_count:
        write_set(out_dir / "class", class_count, size, rng, subject=False)
    return out_dir


def add_phone_photos(folder: Path, *, size: int = 64, seed: int = 0) -> list[Path]:
    """What phone uploads add to a subject's folder: one more photo as an iPhone saves it (HEIC),
    and the first photo again, re-encoded and slightly smaller, which screening finds as a
    near-duplicate. Nothing is rewritten when they are there already."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    heic, again = folder / "subject-phone.heic", folder / "subject-000-again.jpg"
    if not heic.is_file():
        make_image(random.Random(1000 + seed), size, subject=True).save(heic, quality=90)
    first = sorted(p for p in folder.iterdir() if p.name.startswith("subject-000."))[0]
    if not again.is_file():
        Image.open(first).convert("RGB").resize((size - 4, size - 4)).save(again, quality=80)
    return [heic, again]


def screening_lines(checkpoints: Path) -> list[str]:
    """One line per task whose photos screening flagged: what it dropped (or warned about) and why."""
    import json

    lines = []
    for status_file in sorted(Path(checkpoints).glob("*/status.json")):
        screening = json.loads(status_file.read_text()).get("screening") or {}
        for image in screening.get("images", []):
            for finding in image["findings"]:
                verb = "kept" if image["kept"] else "left out"
                lines.append(f"{status_file.parent.name}: {image['file']} {verb} by screening "
                             f"(screen={screening['mode']}): {finding['message']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write instance/ (and class/) into")
    p.add_argument("--count", type=int, default=6, help="subject images (default: 6)")
    p.add_argument("--class-count", type=int, default=0, help="class images (default: 0, i.e. generate them)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    p.add_argument("--captions", action="store_true", help="write NAME.txt captions beside every other image")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--phone-photos", action="store_true",
                   help="also a HEIC photo and a near-duplicate of the first photo (what screening catches)")
    a = p.parse_args(argv)
    out = make_demo_data(a.out_dir, count=a.count, class_count=a.class_count, size=a.size,
                         captions=a.captions, seed=a.seed)
    if a.phone_photos:
        add_phone_photos(out / "instance", size=a.size, seed=a.seed)
    print(f"wrote {a.count} subject and {a.class_count} class images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
