"""Preview images during and after training, from the modules already in memory.

Each prompt has its own fixed seed, so the previews of step 100 and step 200 differ only by
what the LoRA learned. A fast multistep scheduler keeps previews cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from train.data import derive_seed
from train.pipeline import BaseModel
from train.state import replace_dir, state_name


def autocast(base: BaseModel):
    import torch

    if base.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(base.device.type, dtype=base.weight_dtype)


def write_previews(base: BaseModel, prompts: Sequence[str], root: Path, step: int, *, num_images: int,
                   steps: int, guidance_scale: float, resolution: int, seed: int) -> Path:
    """Write ``root/step-<N>/{0.png, ..., grid.png, prompts.json}`` and return that folder."""
    import torch

    final = root / state_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pipe = base.pipeline()
    was_training = {name: m.training for name, m in base.torch_modules().items()}
    for module in base.torch_modules().values():
        module.eval()
    images, index = [], []
    try:
        with torch.no_grad(), autocast(base), base.family.prompt_encoding(base):
            for i, prompt in enumerate(prompts):
                prompt_seed = derive_seed(seed, "preview", i)
                g = torch.Generator(device="cpu").manual_seed(prompt_seed)
                out = pipe(prompt=prompt, num_inference_steps=steps, height=resolution, width=resolution,
                           num_images_per_prompt=num_images, generator=g,
                           **base.family.sampling_kwargs(base, guidance_scale)).images
                for image in out:
                    name = f"{len(images)}.png"
                    image.save(tmp / name)
                    index.append({"file": name, "prompt": prompt, "seed": prompt_seed})
                    images.append(image)
    finally:
        for name, module in base.torch_modules().items():
            module.train(was_training[name])
    make_grid(images, cols=num_images).save(tmp / "grid.png")
    (tmp / "prompts.json").write_text(json.dumps({"step": step, "images": index}, indent=2))
    replace_dir(tmp, final)
    return final


def make_grid(images: list, cols: int):
    from PIL import Image

    w, h = images[0].size
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid
