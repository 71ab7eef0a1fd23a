#!/usr/bin/env python3
"""Build the evaluation scorer folders (`--eval-models DIR`, channel `eval`) with random weights, offline.

    python scripts/make_tiny_scorers.py OUT_DIR [--face haar|yunet|none] [--seed 0] [--full]

Writes the layout docs/quality.md describes, with the real classes and file formats, tiny:

    OUT_DIR/clip/   CLIPModel + CLIPProcessor (CLIP tokenizer from a byte-level vocab, 32 px crops)
    OUT_DIR/dino/   Dinov2Model + its BitImageProcessor (32 px crops)
    OUT_DIR/face/   detector.xml (OpenCV's own frontal-face Haar cascade, from cv2.data) or
                    detector.onnx (a random network in YuNet's output layout, run by
                    cv2.FaceDetectorYN), and embedder.onnx (a random 112x112 -> 16-d network run by
                    onnxruntime, SFace's input convention)

Scores computed with them are noise, but every code path is the real one: the processors'
own resize and crop, the models' own forward passes, OpenCV's detectors and onnxruntime.
The same seed always gives the same weights. Nothing is downloaded. ``--full`` gives the
published shapes instead (CLIP ViT-L/14 and DINOv2-base at 224 px, random weights), for
benchmarks that must pay what real scorers cost (scripts/bench_quality_gpu.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# The tokenizer comes from the sibling builder, whether this runs as a script or is imported.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZE = 32           # image side the tiny processors resize and crop to
EMBEDDING = 16      # tiny face embedding width
YUNET_STRIDES = (8, 16, 32)
# YuNet's heads per stride, in the names and widths cv2.FaceDetectorYN reads.
YUNET_HEADS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))


def build_clip(out: Path, seed: int = 0, full: bool = False) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from make_tiny_model import TINY_VOCAB_SIZE, write_tokenizer

    write_tokenizer(out)
    ids = dict(bos_token_id=TINY_VOCAB_SIZE - 2, eos_token_id=TINY_VOCAB_SIZE - 1, pad_token_id=TINY_VOCAB_SIZE - 1)
    if full:  # openai/clip-vit-large-patch14's numbers
        text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, **ids)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14)
        size, projection = 224, 768
    else:
        text = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, **ids)
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      image_size=SIZE, patch_size=8)
        size, projection = SIZE, 16
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
    model.save_pretrained(out)
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    CLIPProcessor(image_processor=images, tokenizer=CLIPTokenizer.from_pretrained(out)).save_pretrained(out)
    return out


def build_dino(out: Path, seed: int = 0, full: bool = False) -> Path:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed + 1)
    shape = (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, image_size=518,
                  patch_size=14) if full else    # facebook/dinov2-base's numbers
             dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=SIZE,
                  patch_size=8))
    model = Dinov2Model(Dinov2Config(**shape))
    model.save_pretrained(out)
    size, crop = (256, 224) if full else (SIZE, SIZE)
    # DINOv2's own preprocessing (resize the short side, centre crop, ImageNet mean/std).
    BitImageProcessor(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop},
                      do_convert_rgb=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def build_face(out: Path, detector: str = "haar", seed: int = 0, yunet_bias: float = 8.0) -> Path:
    """``detector``: haar (OpenCV's frontal-face cascade: finds real faces) or yunet (YuNet's
    layout with random weights: ``yunet_bias`` > 0 scores every cell as a face, < 0 none)."""
    import cv2
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    if detector == "haar":
        shutil.copyfile(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml", out / "detector.xml")
    else:
        onnx.save(_yunet_graph(seed, yunet_bias), out / "detector.onnx")
    onnx.save(_embedder_graph(seed), out / "embedder.onnx")
    return out


def _weights(rng, *shape, scale: float = 0.1):
    import numpy as np
    from onnx import numpy_helper

    return lambda name: numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _embedder_graph(seed: int):
    """112x112 RGB in (N, 3, 112, 112), an EMBEDDING-wide vector out: conv, relu, pool, linear."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_weights(rng, 8, 3, 8, 8, scale=0.01)("conv_w"), _weights(rng, 8)("conv_b"),
             _weights(rng, 8, EMBEDDING, scale=1.0)("fc_w"), _weights(rng, EMBEDDING)("fc_b")]
    nodes = [helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["c"], strides=[8, 8]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["fc1"])]
    graph = helper.make_graph(nodes, "tiny-face-embedder",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["n", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["n", EMBEDDING])], inits)
    return _model(graph)


def _yunet_graph(seed: int, bias: float):
    """YuNet's outputs (cls/obj/bbox/kps per stride 8/16/32, each (1, cells, k)) from an
    average-pooled input and one 1x1 convolution per head."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 7)
    nodes, inits, outputs = [], [], []
    for s in YUNET_STRIDES:
        nodes.append(helper.make_node("AveragePool", ["input"], [f"pool_{s}"], kernel_shape=[s, s], strides=[s, s]))
        for head, k in YUNET_HEADS:
            name = f"{head}_{s}"
            inits += [_weights(rng, k, 3, 1, 1, scale=0.001)(f"{name}_w"),
                      numpy_helper.from_array(np.full(k, bias if head in ("cls", "obj") else 0.0, np.float32),
                                              f"{name}_b"),
                      numpy_helper.from_array(np.array([1, -1, k], np.int64), f"{name}_shape")]
            raw = f"{name}_raw" if head in ("cls", "obj") else name
            nodes += [helper.make_node("Conv", [f"pool_{s}", f"{name}_w", f"{name}_b"], [f"{name}_conv"]),
                      helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_t"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [raw])]
            if head in ("cls", "obj"):
                nodes.append(helper.make_node("Sigmoid", [raw], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "cells", k]))
    graph = helper.make_graph(nodes, "tiny-yunet", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, "h", "w"])], outputs, inits)
    return _model(graph)


def _model(graph):
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime and OpenCV DNN of the last years
    checker.check_model(model)
    return model


def build_scorers(out: Path, *, face: str = "haar", seed: int = 0, full: bool = False) -> Path:
    """``out/clip``, ``out/dino`` and (unless ``face`` is none) ``out/face``; returns ``out``."""
    out = Path(out)
    build_clip(out / "clip", seed, full)
    build_dino(out / "dino", seed, full)
    if face != "none":
        build_face(out / "face", face, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to create (clip/, dino/, face/ inside)")
    p.add_argument("--face", choices=("haar", "yunet", "none"), default="haar",
                   help="face detector of face/ (default: haar, OpenCV's cascade; none: no face/ folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="published shapes (CLIP ViT-L/14, DINOv2-base), random weights")
    a = p.parse_args(argv)
    build_scorers(a.out, face=a.face, seed=a.seed, full=a.full)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
