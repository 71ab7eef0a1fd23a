"""The warm worker's orchestration with a fake task runner: what a job does around each task.

The real training is covered end to end in test_job.py; here run_task is a stand-in that
writes what train.task writes, so failures, stops, restores and exit codes are quick to pin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container import entry
from container.records import read_json
from container.signals import StopFlag
from container.worker import Worker
from opt_ml import make_tree, sdk_encode, thread_host
from train.errors import DataError, Interrupted


class FakeTrain:
    """Stands in for train.pipeline.load_base + train.task.run_task."""

    def __init__(self, behaviour: dict[str, str] | None = None, stop: StopFlag | None = None):
        self.behaviour = behaviour or {}
        self.stop = stop
        self.loads = 0
        self.ran: list[str] = []
        self.configs = {}

    def check_config(self, cfg, model_dir, *, source):
        self.checked = getattr(self, "checked", []) + [source]

    def screen(self, cfg, *, task_id):
        return None

    def load_base(self, model_dir):
        self.loads += 1
        return {"model": str(model_dir)}

    def run_task(self, base, cfg, *, model_dir, checkpoint_dir, class_cache_dir, stop_requested, task_id, status_extra):
        from train.task import TaskResult

        self.ran.append(task_id)
        self.configs[task_id] = cfg
        what = self.behaviour.get(task_id, "ok")
        status = {**status_extra, "state": "running", "step": 0, "attempts": 1}
        if what == "fail":
            (checkpoint_dir / "status.json").write_text(json.dumps({**status, "state": "failed", "error": "bad image x.png"}))
            raise DataError(f"{cfg.instance_data}/x.png: cannot identify image file")
        if what == "crash":
            raise RuntimeError("CUDA out of memory")
        if what == "interrupt":
            (checkpoint_dir / "state").mkdir(exist_ok=True)
            (checkpoint_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted", "step": 2}))
            raise Interrupted("stop requested at step 2; state saved", step=2)
        if what == "stop-after" and self.stop:
            self.stop.set("SIGTERM")
        (model_dir / "pytorch_lora_weights.safetensors").write_bytes(b"lora-" + task_id.encode())
        (model_dir / "manifest.json").write_text(json.dumps({"task_id": task_id}))
        (checkpoint_dir / "status.json").write_text(json.dumps({**status, "state": "completed", "step": cfg.max_train_steps}))
        return TaskResult(state="completed", step=cfg.max_train_steps, loss=0.1, seconds=0.01)


def _tasks(*ids, **extra):
    return [{"task_id": t, "instance_data": "alice", "instance_prompt": f"a photo of {t}", **extra.get(t, {})} for t in ids]


def _job(tmp_path, image_root, tasks, hp=None, **kw):
    model = tmp_path / "model-src"
    model.mkdir(exist_ok=True)
    return make_tree(tmp_path / "ml", tasks=tasks, hyperparameters=sdk_encode(hp or {"max_train_steps": 3}),
                     model=model, images=image_root, **kw)


def _run(monkeypatch, base: Path, fake: FakeTrain, stop: StopFlag | None = None, slots: int = 1) -> int:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))

    def make_host(env, settings, training_hp, job_cfg, stop_flag, rejected, devices):
        return thread_host(env, settings, fake, stop_flag, slots=slots, job_hp=training_hp,
                           mixed_precision=job_cfg.mixed_precision, rejected=rejected), fake

    monkeypatch.setattr(entry, "_make_host", make_host)
    return entry.run_job(base, stop or StopFlag())


def _summary(base: Path, host="algo-1") -> dict:
    return read_json(base / "output" / "data" / host / "summary.json")


def test_a_failing_task_is_recorded_and_the_next_one_runs(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a", "b", "c", "d"))
    fake = FakeTrain({"b": "fail", "c": "crash"})
    assert _run(monkeypatch, base, fake) == 0
    summary = _summary(base)
    outcomes = {t["task_id"]: t for t in summary["tasks"]}
    assert {k: v["outcome"] for k, v in outcomes.items()} == {"a": "completed", "b": "failed", "c": "failed", "d": "completed"}
    assert "x.png" in outcomes["b"]["error"] and "CUDA out of memory" in outcomes["c"]["error"]
    assert summary["base_model_loads"] == 1 == fake.loads
    crashed = read_json(base / "checkpoints" / "c" / "status.json")
    assert crashed["state"] == "failed" and "CUDA out of memory" in crashed["error"] and crashed["host"] == "algo-1"
    assert not (base / "output" / "failure").exists()


def test_on_task_failure_fail_stops_at_the_first_failure_with_a_failure_file(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a", "b", "c"), hp={"on_task_failure": "fail", "max_train_steps": 3})
    fake = FakeTrain({"a": "fail"})
    assert _run(monkeypatch, base, fake) == 1
    assert fake.ran == ["a"]
    failure = (base / "output" / "failure").read_text()
    assert "'a' failed" in failure and "x.png" in failure


def test_a_bad_per_task_hyperparameter_and_an_escaping_path_fail_only_their_tasks(tmp_path, image_root, monkeypatch):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(image_root / "alice", images / "alice")
    (tmp_path / "secret").mkdir()
    (images / "sneaky").symlink_to(tmp_path / "secret", target_is_directory=True)
    tasks = _tasks("ok", "bad-hp", "escape")
    tasks[1]["hyperparameters"] = {"resolution": 30}
    tasks[2]["instance_data"] = "sneaky"  # inside the channel by name, outside it in fact
    base = _job(tmp_path, images, tasks)
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 0
    outcomes = {t["task_id"]: t for t in _summary(base)["tasks"]}
    assert outcomes["bad-hp"]["outcome"] == "failed" and "resolution" in outcomes["bad-hp"]["error"]
    assert outcomes["escape"]["outcome"] == "failed" and "outside" in outcomes["escape"]["error"]
    assert outcomes["ok"]["outcome"] == "completed" and fake.ran == ["ok"]
    assert read_json(base / "checkpoints" / "escape" / "status.json")["state"] == "failed"


def test_a_per_task_mixed_precision_different_from_the_job_fails_that_task(tmp_path, image_root, monkeypatch):
    tasks = _tasks("a", "b")
    tasks[0]["hyperparameters"] = {"mixed_precision": "bf16"}
    base = _job(tmp_path, image_root, tasks)
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 0
    outcomes = {t["task_id"]: t for t in _summary(base)["tasks"]}
    assert outcomes["a"]["outcome"] == "failed" and "mixed_precision" in outcomes["a"]["error"]
    assert outcomes["b"]["outcome"] == "completed"


def test_unknown_job_hyperparameter_fails_before_any_model_loads(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a"), hp={"max_steps": 3, "learning_rate": 1e-4})
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 1
    failure = (base / "output" / "failure").read_text()
    assert "max_steps" in failure and "max_train_steps" in failure and "on_task_failure" in failure
    assert len(failure) <= 1024 and fake.loads == 0


def test_a_malformed_task_list_fails_the_job_before_training_listing_problems(tmp_path, image_root, monkeypatch):
    lines = [json.dumps(t) for t in _tasks("a", "b")]
    lines += ['{"task_id": "a", "instance_data": "x", "instance_prompt": "p"}', '{"task_id": "../evil"}', "{oops"]
    lines += [json.dumps({"task_id": f"t {i}", "instance_data": "x"}) for i in range(40)]  # unsafe ids: job-level
    base = _job(tmp_path, image_root, "\n".join(lines) + "\n")
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 1
    failure = (base / "output" / "failure").read_text()
    assert len(failure) <= 1024
    first = failure.splitlines()[1]
    assert "not valid JSON" in first and "tasks.jsonl:5" in first  # syntax first: nothing else is trusted
    assert "duplicates" in failure and "more" in failure.splitlines()[-1]
    assert fake.loads == 0 and fake.ran == []


def test_a_stop_between_tasks_saves_the_summary_and_exits_143(tmp_path, image_root, monkeypatch):
    stop = StopFlag()
    base = _job(tmp_path, image_root, _tasks("a", "b", "c"))
    fake = FakeTrain({"a": "stop-after"}, stop=stop)
    assert _run(monkeypatch, base, fake, stop) == 143
    summary = _summary(base)
    assert [t["outcome"] for t in summary["tasks"]] == ["completed", "not_started", "not_started"]
    assert summary["state"] == "interrupted"
    assert "SIGTERM" in (base / "output" / "failure").read_text()


def test_an_interrupted_task_is_reported_with_its_step(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a", "b"))
    fake = FakeTrain({"a": "interrupt"})
    assert _run(monkeypatch, base, fake) == 143
    summary = _summary(base)
    assert summary["tasks"][0]["outcome"] == "interrupted" and summary["tasks"][0]["step"] == 2
    assert summary["tasks"][1]["outcome"] == "not_started"


def test_a_restart_returns_completed_tasks_without_retraining(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a", "b", "c"))
    first = FakeTrain({"b": "interrupt"})
    assert _run(monkeypatch, base, first) == 143
    # A fresh instance: only the checkpoint prefix comes back.
    import shutil

    for sub in ("model", "output"):
        shutil.rmtree(base / sub)
    second = FakeTrain()
    assert _run(monkeypatch, base, second) == 0
    assert second.ran == ["b", "c"]  # a was delivered before; b resumes; c is new
    assert (base / "model" / "a" / "pytorch_lora_weights.safetensors").read_bytes() == b"lora-a"
    assert second.configs["b"].resume is True
    outcomes = {t["task_id"]: t["outcome"] for t in _summary(base)["tasks"]}
    assert outcomes == {"a": "restored", "b": "completed", "c": "completed"}


def test_a_half_synced_final_copy_is_not_trusted(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a"))
    assert _run(monkeypatch, base, FakeTrain()) == 0
    (base / "checkpoints" / "a" / "final" / "manifest.json").unlink()  # the restore lost a file
    again = FakeTrain()
    assert _run(monkeypatch, base, again) == 0
    assert again.ran == ["a"]


@pytest.mark.parametrize("host,expected", [("algo-1", 0), ("algo-2", 1)])
def test_each_host_runs_its_planned_share(tmp_path, image_root, monkeypatch, host, expected):
    from fanout.plan import plan_tasks
    from fanout.tasks import parse_tasks

    tasks = _tasks("a", "b", "c", "d", "e")
    base = _job(tmp_path, image_root, tasks, host=host, hosts=["algo-1", "algo-2"])
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 0
    plan = plan_tasks(parse_tasks("\n".join(json.dumps(t) for t in tasks)), 2, sdk_encode({"max_train_steps": 3}))
    assert fake.ran == list(plan.share(expected))


def test_a_base_model_that_does_not_load_is_a_job_level_failure(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks("a", "b"))
    fake = FakeTrain()

    def broken(model_dir):
        raise OSError(f"{model_dir}/unet: no such file")

    fake.load_base = broken
    assert _run(monkeypatch, base, fake) == 1
    failure = (base / "output" / "failure").read_text()
    assert "base model" in failure and "unet" in failure
    assert _summary(base)["state"] == "failed"
