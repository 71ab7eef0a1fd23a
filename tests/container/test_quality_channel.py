"""The container's `eval` channel: refused at job start when it cannot work (naming the channel
and the folder), scorers loaded once per host and handed to every task, verdicts in summary.json.

The job-start checks run the real train.api.LocalTrainer (they read only config files, so no
model loads); the orchestration uses a stand-in trainer that writes what train.task writes.
"""

from __future__ import annotations

import json
import shutil

import pytest

from container import entry
from container.records import read_json
from container.signals import StopFlag
from opt_ml import make_tree, sdk_encode
from test_worker import _run


def _tasks(*ids, **extra):
    return [{"task_id": t, "instance_data": "alice", "instance_prompt": "a photo of sks toy", **extra.get(t, {})}
            for t in ids]


@pytest.mark.parametrize("breakage, message", [
    ("wrong-class", "channel 'eval' ({eval}): folder dino/ holds a 'clip' model (CLIPModel); expected a DINO or "
                    "DINOv2 model (AutoModel) with its image processor (config.json model_type dinov2 or "),
    ("missing", "channel 'eval' ({eval}): folder clip/ is missing ({eval}/clip); expected a transformers CLIPModel "
                "with its CLIPProcessor"),
    ("bad-face", "channel 'eval' ({eval}): folder face/ has no embedder file (embedder.onnx)"),
], ids=["wrong-class", "missing", "bad-face"])
def test_a_scorer_folder_that_cannot_work_fails_the_job_at_start(tmp_path, tiny_model, image_root, tiny_scorers,
                                                                 monkeypatch, breakage, message):
    scorers = tmp_path / "eval"
    shutil.copytree(tiny_scorers, scorers)
    if breakage == "wrong-class":
        shutil.rmtree(scorers / "dino")
        shutil.copytree(scorers / "clip", scorers / "dino")
    elif breakage == "missing":
        shutil.rmtree(scorers / "clip")
    else:
        (scorers / "face" / "embedder.onnx").unlink()
    base = make_tree(tmp_path / "ml", tasks=_tasks("a"), hyperparameters=sdk_encode({"max_train_steps": 2}),
                     model=tiny_model, images=image_root, eval_models=scorers)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert entry.run_job(base, StopFlag()) == 1
    channel = base / "input" / "data" / "eval"
    assert message.format(eval=channel) in (base / "output" / "failure").read_text()
    assert not (base / "checkpoints" / "a").exists()          # nothing trained, nothing loaded


class ScoringTrain:
    """A Trainer with evaluation: each task's status.json gets the verdict ``verdicts`` says."""

    def __init__(self, verdicts: dict[str, str], fail_load: bool = False):
        self.verdicts, self.fail_load = verdicts, fail_load
        self.scorer_loads, self.checked, self.given, self.configs = 0, [], {}, {}

    def check_config(self, cfg, model_dir, *, source):
        pass

    def check_scorers(self, eval_dir, *, source):
        self.checked.append(source)

    def screen(self, cfg, *, task_id):
        return None  # screening is tested in test_screening_job.py

    def load_base(self, model_dir):
        return {"model": str(model_dir)}

    def load_scorers(self, eval_dir):
        if self.fail_load:
            raise RuntimeError("model.safetensors is truncated")
        self.scorer_loads += 1
        return {"scorers": str(eval_dir)}

    def run_task(self, base, cfg, *, model_dir, checkpoint_dir, class_cache_dir, stop_requested, task_id,
                 status_extra, scorers=None):
        from train.task import TaskResult

        from pathlib import Path

        from train.errors import DataError

        if not Path(cfg.instance_data).is_dir():
            raise DataError(f"instance data: {cfg.instance_data} is not a folder")
        self.given[task_id], self.configs[task_id] = scorers, cfg
        quality = {"verdict": self.verdicts[task_id], "reasons": ["..."]}
        (model_dir / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
        (model_dir / "manifest.json").write_text(json.dumps({"task_id": task_id, "quality": quality}))
        (checkpoint_dir / "status.json").write_text(json.dumps({**status_extra, "state": "completed", "step": 2,
                                                                "quality": quality}))
        return TaskResult(state="completed", step=2, loss=0.1, seconds=0.01)


def test_scorers_load_once_per_host_every_task_gets_them_and_summary_has_each_verdict(
        tmp_path, image_root, tiny_scorers, monkeypatch):
    tasks = _tasks("a", "b", "c", "gone", b={"hyperparameters": {"quality_gate": {"dino": 0.7}}})
    tasks[3]["instance_data"] = "nobody"
    hp = {"max_train_steps": 2, "quality_gate": {"dino": 0.5, "copying": 0.95}, "on_quality_fail": "retry"}
    base = make_tree(tmp_path / "ml", tasks=tasks, hyperparameters=sdk_encode(hp), model=tmp_path,
                     images=image_root, eval_models=tiny_scorers)
    fake = ScoringTrain({"a": "passed", "b": "failed_quality", "c": "needs_review"})
    assert _run(monkeypatch, base, fake) == 0
    assert fake.scorer_loads == 1 and fake.checked == [f"channel 'eval' ({base / 'input' / 'data' / 'eval'})"]
    assert set(fake.given) == {"a", "b", "c"} and all(s == {"scorers": str(base / "input" / "data" / "eval")}
                                                      for s in fake.given.values())
    # the job's gate is every task's default; a task's own gate replaces it
    assert fake.configs["a"].quality_gate == {"dino": 0.5, "copying": 0.95} and fake.configs["b"].quality_gate == {"dino": 0.7}
    assert fake.configs["a"].on_quality_fail == "retry"
    summary = read_json(base / "output" / "data" / "algo-1" / "summary.json")
    assert {t["task_id"]: t["verdict"] for t in summary["tasks"]} == {
        "a": "passed", "b": "failed_quality", "c": "needs_review", "gone": "not_evaluated"}


def test_a_restarted_job_keeps_the_verdict_of_a_delivered_task(tmp_path, image_root, tiny_scorers, monkeypatch):
    base = make_tree(tmp_path / "ml", tasks=_tasks("a"), hyperparameters=sdk_encode({"max_train_steps": 2}),
                     model=tmp_path, images=image_root, eval_models=tiny_scorers)
    assert _run(monkeypatch, base, ScoringTrain({"a": "failed_quality"})) == 0
    shutil.rmtree(base / "model")                               # a restarted instance starts empty
    (base / "model").mkdir()
    again = ScoringTrain({})
    assert _run(monkeypatch, base, again) == 0 and again.given == {}
    [task] = read_json(base / "output" / "data" / "algo-1" / "summary.json")["tasks"]
    assert (task["outcome"], task["verdict"]) == ("restored", "failed_quality")


def test_without_the_channel_nothing_is_loaded_and_tasks_are_not_evaluated(tmp_path, image_root, monkeypatch):
    base = make_tree(tmp_path / "ml", tasks=_tasks("a"), hyperparameters=sdk_encode({"max_train_steps": 2}),
                     model=tmp_path, images=image_root)
    fake = ScoringTrain({"a": "not_evaluated"})
    assert _run(monkeypatch, base, fake) == 0
    assert fake.scorer_loads == 0 and fake.checked == [] and fake.given == {"a": None}


def test_scorers_that_fail_to_load_fail_the_job_naming_the_channel(tmp_path, image_root, tiny_scorers, monkeypatch):
    base = make_tree(tmp_path / "ml", tasks=_tasks("a", "b"), hyperparameters=sdk_encode({"max_train_steps": 2}),
                     model=tmp_path, images=image_root, eval_models=tiny_scorers)
    assert _run(monkeypatch, base, ScoringTrain({}, fail_load=True)) == 1
    assert ("scorer models in channel 'eval' failed to load: RuntimeError: model.safetensors is truncated"
            in (base / "output" / "failure").read_text())
