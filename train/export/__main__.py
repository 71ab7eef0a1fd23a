"""Export again from a LoRA already on disk, without training:

    python -m train.export --lora OUT/model --base BASE_DIR --formats lora,kohya,merged-fp16 --out NEW_DIR

`--lora` is a folder holding pytorch_lora_weights.safetensors, or one .safetensors file
(diffusers or kohya format). When that folder has a manifest.json (an earlier export), its
hyperparameters and drift prompts are carried over. Every ExportConfig field is a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from .config import ExportConfig
from .errors import TrainError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lora", type=Path, required=True,
                   help="folder with pytorch_lora_weights.safetensors, or one LoRA .safetensors file")
    p.add_argument("--base", type=Path, required=True, help="the base model: a diffusers pipeline folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write the exports and manifest.json to")
    p.add_argument("--validation-prompt", action="append", default=None,
                   help="prompt for the drift renders (repeatable; default: the source manifest's, else 'a photo')")
    p.add_argument("--seed", type=int, default=0, help="first seed of the drift renders")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    for f in dataclasses.fields(ExportConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        elif f.name == "formats":
            p.add_argument(flag, default=",".join(f.default), help=f.metadata["help"])
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"])
    return p


def run(args: argparse.Namespace) -> dict:
    import torch

    from train.families import family_of

    from . import portable
    from .exporter import export_model
    from .lora import ADAPTER, LORA_WEIGHT_NAME, has_adapter

    cfg = ExportConfig.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(ExportConfig)},
                                 source="command line")
    lora_dir, weight_name = (args.lora.parent, args.lora.name) if args.lora.is_file() else (args.lora, LORA_WEIGHT_NAME)
    if not (lora_dir / weight_name).is_file():
        raise TrainError(f"--lora {args.lora}: no {weight_name} there")
    if not (args.base / "model_index.json").is_file():
        raise TrainError(f"--base {args.base}: not a diffusers pipeline folder (no model_index.json)")
    family = family_of(args.base)  # SD, SDXL, ...: the base's own pipeline class reads the LoRA
    previous = _previous_manifest(lora_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = family.load_pipeline(args.base, dtype=dtype, device=device)
    pipe.load_lora_weights(lora_dir, weight_name=weight_name, adapter_name=ADAPTER)
    # Our own files carry lora_B with alpha / r folded in (portable.py): back to the trained adapter.
    portable.restore_trained(pipe, lora_dir / weight_name, ADAPTER)
    lora_config = getattr(pipe, family.denoiser).peft_config[ADAPTER]
    prompts = args.validation_prompt or previous.get("drift_renders", {}).get("prompts", [])
    extra = {**previous.get("hyperparameters", {}), "exported_from": str(args.lora.resolve())}
    return export_model(pipe, cfg, args.out, base_model_dir=args.base,
                        train_text_encoder=any(has_adapter(getattr(pipe, n)) for n in family.text_encoders),
                        rank=lora_config.r, lora_alpha=lora_config.lora_alpha,
                        validation_prompts=prompts, seed=args.seed, extra_manifest=extra, family=family)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = run(args)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, entry in manifest["formats"].items():
        print(f"{name}: {entry['status']} {entry.get('path') or entry.get('reason', '')}")
    print(f"manifest: {args.out / 'manifest.json'}")
    return 0


def _previous_manifest(lora_dir: Path) -> dict:
    path = lora_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())
