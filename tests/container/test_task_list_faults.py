"""A task list mixing good and bad tasks: what one task can be blamed for fails that task
alone, with its reason in its status.json, while the others train; status.json has one writer."""

from __future__ import annotations

import json

import pytest
from test_worker import FakeTrain, _job, _run, _summary, _tasks

from container.records import read_json
from fanout.errors import TaskListError
from fanout.tasks import parse_tasks


def _bad_tasks():
    tasks = _tasks("ok", "escape", "prompts", "hp-type", "ok2")
    tasks[1]["instance_data"] = "../bob"                       # leaves the images channel
    tasks[2]["validation_prompts"] = "a photo of sks dog"      # a string, not a list
    tasks[3]["hyperparameters"] = ["rank", 8]                  # a list, not an object
    return tasks


def test_a_task_with_bad_fields_fails_alone_with_its_reason(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _bad_tasks())
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 0
    assert fake.ran == ["ok", "ok2"]
    outcomes = {t["task_id"]: t for t in _summary(base)["tasks"]}
    assert {k: v["outcome"] for k, v in outcomes.items()} == {
        "ok": "completed", "escape": "failed", "prompts": "failed", "hp-type": "failed", "ok2": "completed"}
    expected = {"escape": "field 'instance_data' must be a folder relative to its channel",
                "prompts": "field 'validation_prompts' must be a list of strings",
                "hp-type": "field 'hyperparameters' must be a JSON object"}
    for task_id, why in expected.items():
        status = read_json(base / "checkpoints" / task_id / "status.json")
        assert status["state"] == "failed" and why in status["error"], status
        assert f"tasks.jsonl:{[t['task_id'] for t in _bad_tasks()].index(task_id) + 1}: task {task_id!r}" in status["error"]
        assert status["attempts"] == 1 and status["host"] == "algo-1" and status["started_at"] and status["finished_at"]
        assert not (base / "model" / task_id).exists()
    assert not (base / "output" / "failure").exists()


def test_the_operator_tools_still_refuse_such_a_list_before_launch():
    text = "".join(json.dumps(t) + "\n" for t in _bad_tasks())
    with pytest.raises(TaskListError) as caught:
        parse_tasks(text, source="tasks.jsonl")
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize("line, why", [
    ('{"task_id": "../evil", "instance_data": "a", "instance_prompt": "p"}', "field 'task_id' must match"),
    ('{"task_id": "ok", "instance_data": "b", "instance_prompt": "p"}', "duplicates line 1"),
    ('{"instance_data": "a", "instance_prompt": "p"}', "field 'task_id' is required"),
    ("[1, 2", "not valid JSON"),
])
def test_what_no_single_task_owns_still_fails_the_job(tmp_path, image_root, monkeypatch, line, why):
    text = json.dumps(_tasks("ok")[0]) + "\n" + line + "\n"
    base = _job(tmp_path, image_root, text)
    fake = FakeTrain()
    assert _run(monkeypatch, base, fake) == 1
    assert why in (base / "output" / "failure").read_text() and fake.ran == []


def test_status_json_of_a_running_task_is_written_by_train_alone(tmp_path, image_root, monkeypatch):
    """The container no longer rewrites what train wrote (it used to override the state)."""
    base = _job(tmp_path, image_root, _tasks("a", "b"))
    fake = FakeTrain({"a": "interrupt"})
    written = {}
    original = fake.run_task

    def run_task(*args, checkpoint_dir, **kwargs):
        try:
            return original(*args, checkpoint_dir=checkpoint_dir, **kwargs)
        finally:
            written[kwargs["task_id"]] = (checkpoint_dir / "status.json").read_bytes()

    fake.run_task = run_task
    assert _run(monkeypatch, base, fake) == 143
    assert (base / "checkpoints" / "a" / "status.json").read_bytes() == written["a"]
    assert read_json(base / "checkpoints" / "a" / "status.json")["state"] == "interrupted"
