"""Turning examples into denoiser inputs: latents and prompt embeddings, cached when possible.

Latents are cached once per task when no random augmentation is on (the crop, centred, on
the faces or at the image's bucket, is then the same every epoch); what is cached is the VAE posterior (mean, std), and every step still
draws its own sample from it, as uncached training would. Prompt embeddings (every tensor the
family's ``encode_prompts`` returns: hidden states, pooled embeddings ...) are cached when the
text encoders are frozen. On the tiny model this halves a step; on SD1.5 it saves the VAE
encoder pass (the largest activation) every step. The family does the model-specific part.
"""

from __future__ import annotations

from typing import Any, Sequence

from train.config import TrainConfig
from train.data import Example, crop_box, to_tensor
from train.families import ImageInfo
from train.pipeline import BaseModel

CHUNK = 8


class Encoder:
    def __init__(self, base: BaseModel, cfg: TrainConfig, examples: Sequence[Example]):
        self.base, self.cfg, self.family = base, cfg, base.family
        self.cache_latents = cfg.center_crop and not cfg.random_flip
        self.cache_text = not cfg.train_text_encoder
        self._posteriors: dict[int, tuple] = {}
        self._embeddings: dict[str, dict[str, Any]] = {}
        if self.cache_latents:
            self._encode_all(examples)
        if self.cache_text:
            self._embed_all(sorted({e.caption for e in examples}))

    # --- latents ---
    def latents(self, examples: Sequence[Example], rng) -> tuple[Any, list[ImageInfo]]:
        """(latents of the micro-batch, each image's size and crop) for ``examples``."""
        import torch

        res = self.cfg.resolution
        if self.cache_latents:
            mean = torch.cat([self._posteriors[id(e)][0] for e in examples])
            std = torch.cat([self._posteriors[id(e)][1] for e in examples])
            infos = [image_info(e, crop_box(e, res, center_crop=True)[:2], res) for e in examples]
        else:
            pixels, infos = [], []
            for e in examples:
                top, left = crop_box(e, res, center_crop=self.cfg.center_crop, rng=rng)[:2]
                pixels.append(to_tensor(e, res, center_crop=False, random_flip=self.cfg.random_flip, rng=rng,
                                        crop=(top, left)))
                infos.append(image_info(e, (top, left), res))
            mean, std = self.family.encode_pixels(self.base, torch.stack(pixels))
        return self.family.sample_latents(self.base, mean, std, rng), infos

    def _encode_all(self, examples: Sequence[Example]) -> None:
        import torch

        res = self.cfg.resolution
        by_size: dict[tuple[int, int], list[Example]] = {}
        for e in examples:              # aspect-ratio buckets: one VAE batch per size
            by_size.setdefault(e.target(res), []).append(e)
        for group in by_size.values():
            for start in range(0, len(group), CHUNK):
                chunk = group[start:start + CHUNK]
                pixels = torch.stack([to_tensor(e, res, center_crop=True, random_flip=False) for e in chunk])
                mean, std = self.family.encode_pixels(self.base, pixels)
                for i, e in enumerate(chunk):
                    self._posteriors[id(e)] = (mean[i:i + 1], std[i:i + 1])

    # --- text ---
    def text(self, captions: Sequence[str]) -> dict[str, Any]:
        """The family's prompt embeddings of ``captions`` ({name: tensor}, first dim = len(captions))."""
        if self.cache_text:
            return self.family.join_prompts([self._embeddings[c] for c in captions])
        return self.family.encode_prompts(self.base, captions, self.cfg)

    def _embed_all(self, captions: Sequence[str]) -> None:
        import torch

        with torch.no_grad(), self.family.prompt_encoding(self.base):
            for start in range(0, len(captions), CHUNK):
                chunk = captions[start:start + CHUNK]
                out = self.family.encode_prompts(self.base, chunk, self.cfg)
                for i, c in enumerate(chunk):
                    self._embeddings[c] = {k: v[i:i + 1] for k, v in out.items()}


def image_info(example: Example, crop_top_left: tuple[int, int], resolution: int) -> ImageInfo:
    """The image's original size, crop offset and trained size (its bucket, or the square)."""
    original = example.original_size or (example.image.height, example.image.width)
    return ImageInfo(original_size=original, crop_top_left=crop_top_left, target_size=example.target(resolution))
