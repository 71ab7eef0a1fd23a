#!/usr/bin/env python3
"""The evaluation's share of a task's wall time, at the default settings, on the tiny CPU models.

    python scripts/bench_quality.py [--family sd] [--steps 400] [--resolution 64] [--tasks 2]
                                    [--threads 1] [--compare] [--workdir build/bench-quality] [--json OUT]

Trains ``--tasks`` tasks one after another on one loaded base (as the warm worker does), every
setting at its TrainConfig default except the resolution (64 px: tiny models) and the seed,
with the tiny scorer models (scripts/make_tiny_scorers.py) (and with ``--compare`` the same
tasks again without them). Prints per task: wall seconds, evaluation seconds (render / score)
and the share; the first
task renders the base-model half of the drift pairs, the later ones take it from the host's
cache, so their share is what a warm host pays. Target (docs/quality.md): at most 10 %.

The tiny models' costs are not a GPU's (CPU, 64 px, random weights): the figure checks the
shape of the work (how many renders against how many training steps); scripts/bench_quality_gpu.py
measures SD 1.5 / SDXL / FLUX shapes on a CUDA machine.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def inputs(work: Path, family: str) -> tuple[Path, Path, Path]:
    import make_demo_data
    import make_tiny_model
    import make_tiny_scorers

    model, photos, scorers = work / f"model-{family}", work / "photos", work / "eval"
    if not (model / "model_index.json").is_file():
        make_tiny_model.build_pipeline(model, family=family)
    if not photos.is_dir():
        make_demo_data.make_demo_data(work / "tmp", count=4, size=96, seed=1)
        (work / "tmp" / "instance").rename(photos)
    if not (scorers / "dino" / "config.json").is_file():
        make_tiny_scorers.build_scorers(scorers)
    return model, photos, scorers


def run(base, photos: Path, scorers, out: Path, n: int, args) -> list[dict]:
    from train.config import TrainConfig
    from train.task import run_task

    rows = []
    for k in range(n):
        cfg = TrainConfig(instance_data=str(photos), instance_prompt="a photo of sks toy", resolution=args.resolution,
                          max_train_steps=args.steps, seed=k)
        t0 = time.perf_counter()
        with redirect_stdout(io.StringIO()):
            run_task(base, cfg, model_dir=out / f"t{k}" / "model", checkpoint_dir=out / f"t{k}" / "ck",
                     scorers=scorers, task_id=f"t{k}")
        wall = time.perf_counter() - t0
        quality = json.loads((out / f"t{k}" / "ck" / "status.json").read_text()).get("quality", {})
        rows.append({"task": k, "wall": round(wall, 2), "evaluation": quality.get("seconds", 0.0),
                     "timings": quality.get("timings", {}), "images": len(quality.get("images", []))})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="sd", choices=("sd", "sdxl"))
    p.add_argument("--steps", type=int, default=400, help="training steps per task (default: TrainConfig's 400)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compare", action="store_true", help="also train the tasks without scorers (wall time)")
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-quality")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from train.cli import quiet_library_progress_bars
    from train.pipeline import load_base
    from train.quality import load_scorers

    quiet_library_progress_bars()
    model, photos, scorer_dir = inputs(a.workdir, a.family)
    base, scorers = load_base(model), load_scorers(scorer_dir)
    print(f"{a.family} tiny, {a.resolution} px, {a.steps} steps, TrainConfig defaults otherwise, {a.threads} thread(s)")
    with_eval = run(base, photos, scorers, a.workdir / "runs-eval", a.tasks, a)
    without = run(base, photos, None, a.workdir / "runs-plain", a.tasks, a) if a.compare else [{}] * a.tasks
    print(f"{'task':>4} {'wall s':>8} {'no-eval s':>9} {'eval s':>7} {'render':>7} {'score':>6} {'images':>6} {'share':>6}")
    for row, plain in zip(with_eval, without):
        row["wall_without"] = plain.get("wall")
        row["share"] = round(row["evaluation"] / row["wall"], 4)
        plain_wall = f"{plain['wall']:.1f}" if plain else "-"
        print(f"{row['task']:>4} {row['wall']:>8.1f} {plain_wall:>9} {row['evaluation']:>7.2f} "
              f"{row['timings'].get('render', 0):>7.2f} {row['timings'].get('score', 0):>6.2f} {row['images']:>6} "
              f"{row['share']:>6.1%}")
    warm = with_eval[1:] or with_eval
    share = sum(r["evaluation"] for r in warm) / sum(r["wall"] for r in warm)
    print(f"evaluation share of a task's wall time on a warm host: {share:.1%} (target <= 10 %)")
    if a.json:
        a.json.write_text(json.dumps({"rows": with_eval, "warm_share": round(share, 4), "args": vars(a)}, default=str,
                                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
