"""Users' LoRAs for the serving tests: one LoRA trained by the project per family (the real
loop and exporter, tiny settings), copied into many users' model folders with a small
perturbation each (every user draws a different picture), and each user's reference image
rendered in a fresh pipeline holding that user's LoRA alone."""

from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path

import numpy as np

LORA = "pytorch_lora_weights.safetensors"
BUCKET, TABLE = "serve-test", "serve-models"   # the moto bucket and models table of the serving tests
CALL = {"prompt": "a photo of sks toy", "num_inference_steps": 1, "height": 32, "width": 32, "seed": 7}
UP_KEYS = ("lora_B", "lora.up", "lora_up")


def train_lora(base_dir: Path, demo_data: Path, out: Path, **settings) -> Path:
    """One task through the project's own loop; returns its model folder (LoRA + manifest)."""
    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.task import run_task

    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=CALL["prompt"], resolution=32,
                      max_train_steps=3, learning_rate=5e-3, preview_every=0, checkpoint_every=0, log_every=10,
                      num_preview_images=1, preview_inference_steps=1, export="lora", export_check=False, **settings)
    run_task(load_base(base_dir), cfg, model_dir=out / "model", checkpoint_dir=out / "ck", task_id="trained")
    return out / "model"


def export_lora(base_dir: Path, family: str, out: Path, seed: int = 0) -> Path:
    """A LoRA on the family's default targets with random up-projections, written by the
    project's exporter (the same files and manifest a trained task gets), without training."""
    import types

    import torch
    from peft import LoraConfig

    from train.export import ExportConfig, export_model
    from train.families import family_named

    fam = family_named(family)
    pipe = pristine(base_dir, family)
    denoiser = getattr(pipe, fam.denoiser)
    if hasattr(fam, "_num_single_layers") and hasattr(denoiser.config, "num_single_layers"):
        fam._num_single_layers = denoiser.config.num_single_layers
    targets = fam.lora_targets(types.SimpleNamespace(lora_targets=(), train_text_encoder=False))[fam.denoiser]
    torch.manual_seed(seed)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=list(targets)))
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    export_model(pipe, ExportConfig(formats="lora", drift_check=False), out, base_model_dir=base_dir,
                 train_text_encoder=False, rank=4, lora_alpha=8, family=fam)
    return out


def make_users(trained: Path, root: Path, count: int, prefix: str = "user") -> dict[str, Path]:
    """``count`` model folders under ``root``: the trained LoRA with every up-projection nudged by
    its own noise (seeded by the user's number), the manifest's file entry updated to match."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from train.export.manifest import file_entries

    with safe_open(str(trained / LORA), "pt") as f:
        header, state = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads((trained / "manifest.json").read_text())
    users = {}
    for i in range(count):
        name = f"{prefix}-{i:02d}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(1000 + i)
        nudged = {k: (v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if any(u in k for u in UP_KEYS) else v)
                  for k, v in state.items()}
        save_file(nudged, str(folder / LORA), metadata=header)
        (folder / "manifest.json").write_text(json.dumps({**manifest, "files": file_entries(folder)}) + "\n")
        users[name] = folder
    return users


def pristine(base_dir: Path, family: str):
    """The family's pipeline as a user loads it, never given an adapter (deep-copied per user)."""
    import torch

    from train.families import family_named

    return family_named(family).load_pipeline(str(base_dir), dtype=torch.float32)


def reference(pipe, user_dir: Path, call: dict | None = None) -> list[np.ndarray]:
    """The user's images from a fresh pipeline (a deep copy of ``pipe``, which never held an
    adapter) with only this user's LoRA loaded."""
    import torch

    call = {**CALL, **(call or {})}
    fresh = copy.deepcopy(pipe)
    fresh.load_lora_weights(str(user_dir))
    kwargs = dict(prompt=call["prompt"], num_inference_steps=call["num_inference_steps"], height=call["height"],
                  width=call["width"], num_images_per_prompt=call.get("num_images", 1),
                  generator=torch.Generator("cpu").manual_seed(call["seed"]))
    if "guidance_scale" in call:
        kwargs["guidance_scale"] = call["guidance_scale"]
    with torch.inference_mode():
        return [np.asarray(image) for image in fresh(**kwargs).images]


def decode(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
