"""Task-list validation: what an operator sees when the list is wrong."""

import json

import pytest

from fanout.errors import FanoutError, TaskListError
from fanout.tasks import TaskSpec, dump_tasks, load_tasks, parse_tasks


def line(**fields):
    base = {"task_id": "dog", "instance_data": "dog", "instance_prompt": "a photo of sks dog"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def problems(text, source="tasks.jsonl"):
    with pytest.raises(TaskListError) as info:
        parse_tasks(text, source)
    assert isinstance(info.value, FanoutError)
    return info.value.problems


def test_jsonl_and_array_give_the_same_tasks(tmp_path):
    rows = [json.loads(line(task_id=f"t{i}", validation_prompts=["a", "b"], host=i)) for i in range(3)]
    jsonl = tmp_path / "tasks.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    array = tmp_path / "tasks.json"
    array.write_text(json.dumps(rows, indent=2))
    a, b = load_tasks(jsonl), load_tasks(array)
    assert a == b
    assert [t.task_id for t in a] == ["t0", "t1", "t2"]
    assert a[1].validation_prompts == ("a", "b") and a[1].host == 1 and a[1].line == 2


def test_every_problem_is_reported_with_file_line_task_and_field():
    text = "\n".join([
        line(),
        line(task_id="bad/id"),
        line(task_id="h", host=-1),
        line(task_id="o", output_uri="https://x/y"),
        line(task_id="v", validation_prompts="just one"),
        line(task_id="p", hyperparameters=[1]),
        line(task_id="dog"),
    ])
    found = problems(text)
    assert len(found) == 6
    # most important first (duplicate ids), then in line order
    assert "tasks.jsonl:7: task 'dog' field 'task_id' duplicates line 1" in found[0]
    assert "tasks.jsonl:2: task 'bad/id' field 'task_id' must match" in found[1]
    assert "tasks.jsonl:3: task 'h' field 'host' must be a non-negative integer" in found[2]
    assert "field 'output_uri' must be an s3:// URI" in found[3]
    assert "field 'validation_prompts' must be a list of strings" in found[4]
    assert "field 'hyperparameters' must be a JSON object" in found[5]


@pytest.mark.parametrize("task_id", ["..", ".", "a/b", "../etc", "-x", "", "x" * 129, "a b"])
def test_unsafe_or_malformed_task_ids_are_rejected(task_id):
    assert any("task_id" in p for p in problems(line(task_id=task_id)))


def test_missing_required_field_unknown_field_and_bad_json():
    found = problems(line(instance_prompt=...) + "\n" + line(task_id="b", instnace_data="x") + "\n{oops\n[1]")
    assert "tasks.jsonl:3: not valid JSON" in found[0]
    assert "tasks.jsonl:4: expected a JSON object" in found[1]
    assert "field 'instance_prompt' is required" in found[2]
    assert "unknown field 'instnace_data'; valid fields: task_id, instance_data" in found[3]


@pytest.mark.parametrize("value", [True, 1.5, "2"])
def test_host_must_be_an_integer(value):
    assert any("'host'" in p for p in problems(line(host=value)))


def test_paths_must_stay_inside_their_channel():
    found = problems(line(instance_data="/etc") + "\n" + line(task_id="b", class_data="a/../../x"))
    assert "instance_data" in found[0] and "class_data" in found[1]
    assert parse_tasks(line(instance_data="s3://bucket/u1/images"))[0].instance_data.startswith("s3://")


def test_empty_list_and_unreadable_file(tmp_path):
    assert "no tasks" in problems("\n\n")[0]
    with pytest.raises(TaskListError, match="cannot read"):
        load_tasks(tmp_path / "missing.jsonl")


def test_dump_round_trips_and_carries_user_fields():
    tasks = parse_tasks(line(user_id="u1", metadata={"k": 1}, hyperparameters={"rank": 8}, class_prompt="a dog"))
    again = parse_tasks(dump_tasks(tasks))
    assert again == tasks
    assert again[0].user_id == "u1" and again[0].metadata == {"k": 1}
    assert isinstance(tasks[0], TaskSpec)
