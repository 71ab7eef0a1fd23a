"""A task's evaluation through the training loop: what manifest.json, status.json and
evaluation/ hold, that anyone can recompute the scores from those files, and that every
family renders its evaluation set with its own pipeline.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from train_helpers import FAST

torch = pytest.importorskip("torch")

PROMPT = "a photo of sks toy"
SCORES = {"dino", "clip_i", "clip_t", "drift", "copying", "identity", "faces_per_image"}


@pytest.fixture(scope="module")
def evaluated(base, demo_data, scorers, tmp_path_factory):
    from train.config import TrainConfig
    from train.task import run_task

    root = tmp_path_factory.mktemp("evaluated")
    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, **FAST, export="lora",
                      eval_inference_steps=2, quality_gate={"dino": 1.0, "drift": 1.0})
    with redirect_stdout(io.StringIO()) as log:
        result = run_task(base, cfg, model_dir=root / "model", checkpoint_dir=root / "ck", scorers=scorers,
                          task_id="t-eval")
    return {"root": root, "result": result, "log": log.getvalue(), "cfg": cfg,
            "manifest": json.loads((root / "model" / "manifest.json").read_text()),
            "status": json.loads((root / "ck" / "status.json").read_text())}


def test_the_manifest_carries_scores_verdict_reasons_and_the_images_it_was_scored_on(evaluated):
    quality = evaluated["manifest"]["quality"]
    assert evaluated["result"].state == "completed"
    assert set(quality["scores"]) == SCORES and isinstance(quality["scores"]["dino"], float)
    # dino can only reach 1.0 for images identical to the photos; drift is at most 1.
    assert quality["verdict"] == "failed_quality"
    assert quality["reasons"] == [f"subject DINO {quality['scores']['dino']:.2f} < 1.00"]
    kinds = [im["kind"] for im in quality["images"]]
    # the final preview names the subject (1) + 2 recontextualisation prompts; 2 drift pairs
    assert kinds.count("subject") == 3 and kinds.count("drift_base") == kinds.count("drift_lora") == 2
    model_dir = evaluated["root"] / "model"
    for image in quality["images"]:
        assert (model_dir / image["path"]).is_file(), image   # relative to the manifest's folder
        assert set(image) == {"path", "prompt", "seed", "kind"}
    assert quality["settings"]["steps"] == 2 and quality["gate"] == {"dino": 1.0, "drift": 1.0}
    assert quality["seconds"] > 0 and quality["models"]["clip"]["class"] == "CLIPModel"
    assert "task=t-eval quality: failed_quality dino=" in evaluated["log"]


def test_status_json_holds_the_same_quality_with_paths_from_its_own_folder(evaluated):
    status, manifest = evaluated["status"]["quality"], evaluated["manifest"]["quality"]
    assert {k: v for k, v in status.items() if k not in ("images", "copying_nearest")} == \
           {k: v for k, v in manifest.items() if k not in ("images", "copying_nearest")}
    ck = evaluated["root"] / "ck"
    assert [ck / im["path"] for im in status["images"]] == \
           [Path(os.path.normpath(evaluated["root"] / "model" / im["path"])) for im in manifest["images"]]
    assert all(im["path"].startswith("evaluation/") for im in status["images"])
    assert (ck / status["copying_nearest"]["image"]).is_file()


def test_anyone_can_recompute_the_scores_from_the_saved_files(evaluated, tiny_scorers, demo_data):
    from train.quality.__main__ import main

    evaluation = evaluated["root"] / "ck" / "evaluation"
    recorded = json.loads((evaluation / "quality.json").read_text())
    assert all((evaluation / im["path"]).is_file() for im in recorded["images"])
    with redirect_stdout(io.StringIO()) as out:
        assert main([str(evaluation), "--eval-models", str(tiny_scorers), "--instance-data",
                     str(demo_data / "instance"), "--json"]) == 0
    recomputed = json.loads(out.getvalue())
    assert recomputed["verdict"] == recorded["verdict"] == "failed_quality"
    for name, value in recorded["scores"].items():
        assert recomputed["scores"][name] == pytest.approx(value, abs=2e-4), name


def test_a_scorer_folder_that_cannot_work_is_refused_before_the_model_loads(tiny_model, demo_data, tiny_scorers,
                                                                              tmp_path):
    import shutil

    from train.cli import config_from_args
    from train.errors import ConfigError

    wrong = tmp_path / "eval"
    shutil.copytree(tiny_scorers / "clip", wrong / "clip")
    shutil.copytree(tiny_scorers / "clip", wrong / "dino")     # a CLIP model where DINO belongs
    args = ["--pretrained-model", str(tiny_model), "--instance-data", str(demo_data / "instance"),
            "--instance-prompt", PROMPT, "--output-dir", str(tmp_path / "out"), "--eval-models", str(wrong)]
    with pytest.raises(ConfigError, match=rf"--eval-models {wrong}: folder dino/ holds a 'clip' model \(CLIPModel\); "
                                          r"expected a DINO or DINOv2 model"):
        config_from_args(args)
    shutil.rmtree(wrong / "dino")
    with pytest.raises(ConfigError, match=r"folder dino/ is missing"):
        config_from_args(args)


@pytest.mark.parametrize("family", ["sdxl", "flux", "flux2-klein", "z-image", "qwen-image"])
def test_every_family_renders_its_evaluation_set_with_its_own_pipeline(family, tiny_sdxl_model, tiny_flow_models,
                                                                          tiny_z_image, tiny_qwen_image,
                                                                          scorers, demo_data, tmp_path):
    from PIL import Image

    from train.config import TrainConfig
    from train.pipeline import attach_lora, detach_lora, load_base
    from train.quality.evaluate import evaluate_task

    folders = {"sdxl": tiny_sdxl_model, "z-image": tiny_z_image, "qwen-image": tiny_qwen_image, **tiny_flow_models}
    base = load_base(folders[family])
    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, resolution=32,
                      eval_inference_steps=2)
    attach_lora(base, cfg)
    try:
        with redirect_stdout(io.StringIO()):
            quality = evaluate_task(base, cfg, scorers, checkpoint_dir=tmp_path, step=0, task_id=family)
    finally:
        detach_lora(base)
    assert quality["verdict"] == "passed", quality.get("reasons")
    assert len(quality["images"]) == 6 and quality["scores"]["drift"] is not None
    for image in quality["images"]:
        with Image.open(tmp_path / image["path"]) as im:
            assert im.size == (32, 32)


def test_without_scorers_nothing_is_rendered_and_the_verdict_is_not_evaluated(base, tmp_path):
    from train.config import TrainConfig
    from train.quality.evaluate import evaluate_task

    quality = evaluate_task(base, TrainConfig(instance_prompt=PROMPT), None, checkpoint_dir=tmp_path, step=1)
    assert quality == {"verdict": "not_evaluated", "reasons": [
        "no scorer models were given (python -m train --eval-models DIR, or the job's 'eval' channel)"]}
    assert not (tmp_path / "evaluation").exists()


def test_an_evaluation_that_fails_leaves_the_task_its_lora_and_says_why(base, scorers, demo_data, tmp_path):
    import dataclasses

    from train.config import TrainConfig
    from train.quality.evaluate import evaluate_task

    broken = dataclasses.replace(scorers, base_renders={})

    def out_of_memory(images):
        raise RuntimeError("CUDA out of memory")

    broken.dino_images = out_of_memory
    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt=PROMPT, resolution=32,
                      eval_inference_steps=1, eval_prompts=("{subject}",), eval_drift_prompts=("a {class}",))
    quality = evaluate_task(base, cfg, broken, checkpoint_dir=tmp_path, step=0)
    assert quality["verdict"] == "not_evaluated"
    assert quality["reasons"] == ["evaluation failed: RuntimeError: CUDA out of memory"]
    assert not list(tmp_path.glob(".tmp-*"))            # nothing half written is left to sync
