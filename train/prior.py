"""Class images for prior preservation: the given ones, topped up with generated ones.

Generating class images is the slow part of prior preservation, and it depends only on the
base model, the class prompt, the resolution and the count, not on the subject. So generated
images go to ``class_cache_dir/<hash of those>/`` and the next task with the same class reuses
them. The folder is written under a temporary name and renamed, so it is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from train.config import TrainConfig
from train.data import Example, derive_seed, image_files, load_images
from train.errors import DataError
from train.pipeline import BaseModel
from train.state import replace_dir

BATCH = 4


def cache_key(base: BaseModel, cfg: TrainConfig, count: int) -> str:
    parts = [base.identity(), cfg.class_prompt, cfg.resolution, count, cfg.class_inference_steps,
             cfg.preview_guidance_scale]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def class_examples(base: BaseModel, cfg: TrainConfig, cache_root: Path, log=print) -> list[Example]:
    """``cfg.num_class_images`` class examples: from ``cfg.class_data``, the rest generated (cached)."""
    given: list[Example] = []
    folder = Path(cfg.class_data) if cfg.class_data else None
    if folder is not None and not folder.is_dir():
        raise DataError(f"class data: {folder} is not a folder (leave class_data out to generate class images)")
    if folder is not None and image_files(folder):
        given = load_images(folder, prompt=cfg.class_prompt, resolution=cfg.resolution,
                            max_pixels=cfg.max_image_pixels, what="class", limit=cfg.num_class_images)
    missing = cfg.num_class_images - len(given)
    if missing <= 0:
        return given
    cached = cache_root / cache_key(base, cfg, missing)
    with _generating(cached):
        if (cached / "meta.json").is_file():
            log(f"class images: reusing {missing} cached in {cached}")
        else:
            log(f"class images: generating {missing} for {cfg.class_prompt!r} into {cached}")
            generate(base, cfg, cached, missing)
    return given + load_images(cached, prompt=cfg.class_prompt, resolution=cfg.resolution,
                               max_pixels=cfg.max_image_pixels, what="class")


@contextmanager
def _generating(cached: Path):
    """One process at a time per cache entry: the slots of a host share the cache, and a second
    slot must reuse what the first generates rather than rename a folder away from under it.
    An OS file lock, so a killed process releases it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per cache, as before
        yield
        return
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.parent / f".{cached.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate(base: BaseModel, cfg: TrainConfig, final: Path, count: int) -> None:
    """Sample ``count`` images of the class prompt with the base model (no LoRA attached)."""
    import torch

    from train.previews import autocast

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pipe = base.pipeline()
    with torch.no_grad(), autocast(base), base.family.prompt_encoding(base):
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            # One generator per image: image i is the same whatever the batch size.
            gens = [torch.Generator(device="cpu").manual_seed(derive_seed(0, "class", start + j)) for j in range(n)]
            # The recipe's preview guidance (CFG 7.5 on SD, FLUX.1-dev's distilled guidance 3.5),
            # passed as the family samples with it (none on the distilled models).
            guidance = cfg.preview_guidance_scale
            images = pipe(prompt=[cfg.class_prompt] * n, num_inference_steps=cfg.class_inference_steps,
                          height=cfg.resolution, width=cfg.resolution, generator=gens,
                          **base.family.sampling_kwargs(base, guidance)).images
            for j, image in enumerate(images):
                image.save(tmp / f"class-{start + j:05d}.png")
    meta = {"base_model": str(base.path), "base_identity": base.identity(), "class_prompt": cfg.class_prompt,
            "resolution": cfg.resolution, "count": count, "inference_steps": cfg.class_inference_steps,
            "guidance_scale": cfg.preview_guidance_scale}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, final)
