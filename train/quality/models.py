"""The scorer models: one local folder, checked before anything loads, loaded once per host.

    EVAL/clip/   transformers CLIPModel + CLIPProcessor      (CLIP-I, CLIP-T)
    EVAL/dino/   a DINO / DINOv2 AutoModel + its image processor   (DINO, drift, copying)
    EVAL/face/   optional: face detector + ONNX embedder      (identity; train/quality/faces.py)

``check_eval_models`` reads only the config files (and opens the small face models), so a
wrong folder is refused at job start naming the channel (or flag) and the folder.
``load_scorers`` loads them onto the CPU; ``Scorers.placed(device)`` moves the two
transformers models onto the accelerator for the evaluation and back again afterwards, so
they never hold training memory. Preprocessing is always the processors' own.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.errors import ConfigError

CLIP_TYPES = ("clip",)
# DINO v1 checkpoints (facebook/dino-vits16, ...) are ViTModel configs; DINOv2/v3 have their own.
DINO_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit", "vit")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
BATCH = 16


class ScorerModelsError(ConfigError):
    """The scorer folder is missing a part or holds the wrong kind of model."""


def check_eval_models(root: Path, *, source: str) -> None:
    """Refuse a scorer folder that cannot work (ScorerModelsError naming ``source`` and the folder)."""
    from train.quality.faces import FaceFolderError, check_models, read_layout

    root = Path(root)
    if not root.is_dir():
        raise ScorerModelsError(f"{source}: {root} is not a folder; it must hold clip/ and dino/ (face/ optional)")
    _check_transformers(root, "clip", CLIP_TYPES, "a transformers CLIPModel with its CLIPProcessor", source)
    _check_transformers(root, "dino", DINO_TYPES, "a DINO or DINOv2 model (AutoModel) with its image processor",
                        source)
    if (root / "face").exists():
        try:
            check_models(read_layout(root / "face"))
        except FaceFolderError as exc:
            raise ScorerModelsError(f"{source}: folder {exc}; see docs/quality.md for the files face/ accepts") from None


def _check_transformers(root: Path, name: str, types: tuple[str, ...], expected: str, source: str) -> None:
    folder = root / name
    if not folder.is_dir():
        raise ScorerModelsError(f"{source}: folder {name}/ is missing ({folder}); expected {expected}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ScorerModelsError(f"{source}: folder {name}/ has no readable config.json ({exc}); expected "
                                f"{expected}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in types:
        classes = ", ".join((config.get("architectures") or []) if isinstance(config, dict) else []) or "?"
        raise ScorerModelsError(f"{source}: folder {name}/ holds a {model_type!r} model ({classes}); expected "
                                f"{expected} (config.json model_type {' or '.join(types)})")
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        raise ScorerModelsError(f"{source}: folder {name}/ has no image processor ({' or '.join(PROCESSOR_FILES)}); "
                                f"save the model's processor beside it (processor.save_pretrained)")


@dataclass
class Scorers:
    """The loaded scorers (CPU), their identity for the record, and this host's render cache."""

    clip: Any
    clip_processor: Any
    dino: Any
    dino_processor: Any
    face: Any = None                        # train.quality.faces.FaceModels or None
    info: dict[str, Any] = field(default_factory=dict)
    # Base-model renders of the drift prompts, by render key: identical for every task on this
    # host (same base, prompt, seed and sampler), so each is rendered once (train/quality/render.py).
    base_renders: dict[tuple, bytes] = field(default_factory=dict)
    device: Any = None

    @contextlib.contextmanager
    def placed(self, device):
        """The transformers scorers on ``device`` for the block, back on the CPU after it."""
        import torch

        self.clip.to(device)
        self.dino.to(device)
        self.device = torch.device(device)
        try:
            yield self
        finally:
            self.clip.to("cpu")
            self.dino.to("cpu")
            self.device = torch.device("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _run(self, model, batch):
        import torch

        with torch.inference_mode():
            return model(**{k: v.to(self.device or "cpu") for k, v in batch.items()})

    def clip_images(self, images: list) -> Any:
        """(N, D) L2-normalised CLIP image embeddings of PIL images."""
        import torch

        def embed(chunk):
            inputs = self.clip_processor(images=chunk, return_tensors="pt")
            with torch.inference_mode():
                out = self.clip.get_image_features(pixel_values=inputs["pixel_values"].to(self.device or "cpu"))
            return getattr(out, "pooler_output", out)

        return _normalised(_batched(images, embed))

    def clip_texts(self, texts: list[str]) -> Any:
        """(N, D) L2-normalised CLIP text embeddings (truncated to CLIP's 77 tokens)."""
        import torch

        def embed(chunk):
            inputs = self.clip_processor(text=chunk, return_tensors="pt", padding=True, truncation=True,
                                         max_length=self.clip_processor.tokenizer.model_max_length)
            with torch.inference_mode():
                out = self.clip.get_text_features(**{k: v.to(self.device or "cpu") for k, v in inputs.items()})
            return getattr(out, "pooler_output", out)

        return _normalised(_batched(texts, embed))

    def dino_images(self, images: list) -> Any:
        """(N, D) L2-normalised DINO CLS embeddings (the last layer's normalised CLS token, as
        DreamBooth and PEFT's drift use), of PIL images."""
        return _normalised(_batched(images, lambda chunk: self._run(
            self.dino, self.dino_processor(images=chunk, return_tensors="pt")).last_hidden_state[:, 0]))


def _batched(items: list, embed) -> Any:
    import numpy as np

    parts = [embed(items[i:i + BATCH]).float().cpu().numpy() for i in range(0, len(items), BATCH)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 0))


def _normalised(x):
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if x.size else x


def load_scorers(root: Path) -> Scorers:
    """Load ``root``'s scorers onto the CPU (check_eval_models first), in eval mode, fp32."""
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

    from train.fingerprint import base_model_identity

    root = Path(root)
    clip = CLIPModel.from_pretrained(root / "clip").eval().requires_grad_(False)
    dino = AutoModel.from_pretrained(root / "dino").eval().requires_grad_(False)
    info = {name: {"class": type(model).__name__,
                   "weights_sha256": base_model_identity(root / name)["weights_sha256"][:16]}
            for name, model in (("clip", clip), ("dino", dino))}
    face = None
    if (root / "face").exists():
        from train.quality.faces import FaceModels, read_layout

        face = FaceModels(read_layout(root / "face"))
        info["face"] = face.info()
    return Scorers(clip=clip, clip_processor=CLIPProcessor.from_pretrained(root / "clip"), dino=dino,
                   dino_processor=AutoImageProcessor.from_pretrained(root / "dino"), face=face, info=info)
