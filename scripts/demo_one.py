#!/usr/bin/env python3
"""`make demo-one`: one DreamBooth LoRA task on CPU in a few minutes, offline.

    python scripts/demo_one.py [--workdir build/demo-one] [--steps 100] [--resolution 64]

Builds the tiny random-weight pipeline and synthetic subject images under WORKDIR (once),
then runs `python -m train` on them (~100 steps, previews every 25, scored with tiny scorer
models: `--eval-models`), and prints where the previews, the evaluation and the LoRA are. The images are random-weight renders: this shows the machinery
(previews, resume state, exports, status), not a pretty subject.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# scripts/ is sys.path[0] when a script runs, so its sibling builders import directly.
import make_demo_data
import make_tiny_model
import make_tiny_scorers

ROOT = Path(__file__).resolve().parents[1]




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo-one", help="where everything goes")
    p.add_argument("--steps", type=int, default=100, help="training steps (default: 100)")
    p.add_argument("--resolution", type=int, default=64, help="training resolution (default: 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; the tiny model's ops are too small to gain from more)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.monotonic()
    work = a.workdir.resolve()
    model, data, out = work / "model", work / "data", work / "out"
    if not (model / "model_index.json").is_file():
        make_tiny_model.build_pipeline(model)
    if not (data / "instance").is_dir():
        make_demo_data.make_demo_data(data, count=6, size=96, captions=True)
    if not (work / "eval" / "dino" / "config.json").is_file():
        make_tiny_scorers.build_scorers(work / "eval")

    from train.cli import main as train_main

    rc = train_main([
        "--pretrained-model", str(model), "--instance-data", str(data / "instance"),
        "--instance-prompt", "a photo of sks toy", "--output-dir", str(out),
        "--validation-prompt", "a photo of sks toy", "--validation-prompt", "a sks toy on the beach",
        "--class-prompt", "a photo of a toy", "--num-class-images", "4", "--class-inference-steps", "4",
        "--max-train-steps", str(a.steps), "--resolution", str(a.resolution), "--rank", "4", "--lora-alpha", "4",
        "--learning-rate", "1e-3", "--snr-gamma", "5", "--preview-every", "25", "--preview-inference-steps", "8",
        "--checkpoint-every", "25", "--log-every", "10", "--train-text-encoder",
        "--class-cache-dir", str(work / "class-cache"), "--task-id", "demo-one",
        "--eval-models", str(work / "eval"), "--eval-inference-steps", "8",
    ])
    if rc:
        return rc
    previews = sorted((out / "checkpoints" / "previews").glob("step-*"))
    print(f"\ndemo-one finished in {time.monotonic() - t0:.0f} s")
    print(f"  LoRA (diffusers):  {out / 'model' / 'pytorch_lora_weights.safetensors'}")
    print(f"  all exports:       {out / 'model'} (manifest.json lists them)")
    print(f"  previews:          {previews[-1] / 'grid.png' if previews else '(none)'} "
          f"({len(previews)} preview steps in {out / 'checkpoints' / 'previews'})")
    print(f"  status:            {out / 'checkpoints' / 'status.json'}")
    print(f"  evaluation:        {out / 'checkpoints' / 'evaluation'} (quality.json: scores, verdict)")
    print(f"  load it:           pipe.load_lora_weights('{out / 'model'}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
