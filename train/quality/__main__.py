"""``python -m train.quality``: recompute a task's scores and verdict from its files.

    python -m train.quality CHECKPOINTS/<task>/evaluation --eval-models DIR --instance-data PHOTOS
                            [--quality-gate JSON] [--json]

Reads ``evaluation/quality.json`` (which images, prompts and settings), scores the PNG files
beside it against the photos in PHOTOS with the scorers in DIR, applies the recorded gate (or
``--quality-gate``) and prints the recorded and recomputed values side by side. With the same
scorer models the numbers agree to float precision: nothing but the files goes in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from train.errors import TrainError


def recompute(evaluation: Path, eval_models: Path, instance_data: Path, gate=None) -> dict:
    """{"recorded": the file's quality, "scores", "verdict", "reasons"} recomputed from the files."""
    from train.data import image_files
    from train.quality.gate import judge, parse_gate
    from train.quality.models import check_eval_models, load_scorers
    from train.quality.scores import Image, compute
    from train.quality.settings import EvalSettings

    try:
        recorded = json.loads((evaluation / "quality.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainError(f"{evaluation}/quality.json: not readable ({exc}); is this an evaluation folder?") from None
    if "settings" not in recorded:
        raise TrainError(f"{evaluation}/quality.json: the task was not evaluated ({recorded.get('reasons')})")
    check_eval_models(eval_models, source=f"--eval-models {eval_models}")
    settings = EvalSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded["settings"].items()})
    images = [Image(evaluation / im["path"], im["prompt"], int(im["seed"]), im["kind"]) for im in recorded["images"]]
    result = compute(load_scorers(eval_models), images, image_files(instance_data), settings)
    verdict, reasons = judge(result.scores, parse_gate(recorded.get("gate", {}) if gate is None else gate),
                             unmeasured=result.unmeasured, nearest_photo=(result.nearest or {}).get("photo"),
                             instance_photos=result.photos)
    return {"recorded": recorded, "scores": result.scores, "verdict": verdict, "reasons": reasons}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("evaluation", type=Path, help="a task's checkpoints/<task>/evaluation folder")
    p.add_argument("--eval-models", type=Path, required=True, help="the scorer folder (clip/, dino/, face/)")
    p.add_argument("--instance-data", type=Path, required=True, help="the task's instance photos, as uploaded")
    p.add_argument("--quality-gate", default=None, help="JSON object of limits (default: the recorded gate)")
    p.add_argument("--json", action="store_true", help="print the recomputed scores and verdict as JSON")
    a = p.parse_args(argv)
    try:
        out = recompute(a.evaluation, a.eval_models, a.instance_data, a.quality_gate)
    except (TrainError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({k: out[k] for k in ("scores", "verdict", "reasons")}, indent=2))
        return 0
    recorded = out["recorded"].get("scores", {})
    print(f"{'score':16} {'recorded':>10} {'recomputed':>11}")
    for name, value in out["scores"].items():
        print(f"{name:16} {json.dumps(recorded.get(name)):>10} {json.dumps(value):>11}")
    print(f"verdict: {out['recorded'].get('verdict')} (recorded), {out['verdict']} (recomputed)")
    for reason in out["reasons"]:
        print(f"  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
