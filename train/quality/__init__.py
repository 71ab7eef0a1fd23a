"""Quality of a trained LoRA: scores, a verdict, and the images they were computed on.

After its final previews every task can be scored (docs/quality.md):

    settings.py   what to render: prompts, seeds, steps, image count (per task, per family)
    render.py     render them with the family's preview pipeline, drift pairs with the LoRA on/off
    models.py     the scorer folder (clip/, dino/, face/): checked at start, loaded once per host
    faces.py      face detection (OpenCV) and embedding (onnxruntime) for the identity score
    scores.py     DINO, CLIP-I, CLIP-T, drift, copying, identity, from the saved files
    gate.py       thresholds -> passed / needs_review / failed_quality / not_evaluated
    evaluate.py   evaluate_task: the above in order, called by train/task.py
    table.py      one line per task for people (make demo)

``python -m train.quality`` recomputes the scores of an evaluation folder from its files.
Importing this package is light (no torch): the config and the container validate with it.
"""

from train.quality.gate import MAXIMA, ON_QUALITY_FAIL, SCORES, VERDICTS, gate_problem, parse_gate

__all__ = ["MAXIMA", "ON_QUALITY_FAIL", "SCORES", "VERDICTS", "gate_problem", "parse_gate", "check_eval_models",
           "load_scorers"]


def check_eval_models(root, *, source: str) -> None:
    """Refuse a scorer folder that cannot work, before anything loads (train.quality.models)."""
    from train.quality.models import check_eval_models as check

    check(root, source=source)


def load_scorers(root):
    """The scorers of ``root`` on the CPU (train.quality.models.Scorers)."""
    from train.quality.models import load_scorers as load

    return load(root)
