"""The task list: schema, parsing and validation (stdlib only; shared with the container).

A task list is JSON Lines (one object per line) or a JSON array of objects. Validation
collects every problem in the file before raising, so an operator fixes a 1,000-line list in
one pass; each problem names the file, the line, the task and the field, and says what is
valid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from fanout.errors import TaskListError
from fanout.redaction import secret_shaped, shown, shown_name

TASK_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_TASK_ID_RE = re.compile(TASK_ID_PATTERN)


@dataclass(frozen=True)
class TaskSpec:
    """One fine-tuning task, as written in the task list (defaults are the schema's)."""

    task_id: str = field(metadata={"help": "unique id, TASK_ID_PATTERN; used as a directory name"})
    instance_data: str = field(metadata={"help": "folder of subject images, relative to the images channel (or s3:// URI)"})
    instance_prompt: str = field(metadata={"help": "prompt naming the subject, e.g. 'a photo of sks dog'"})
    class_prompt: str | None = field(default=None, metadata={"help": "turns on prior preservation"})
    class_data: str | None = field(default=None, metadata={"help": "folder of class images, relative to the class channel"})
    validation_prompts: tuple[str, ...] = field(default=(), metadata={"help": "preview prompts; default: the instance prompt"})
    hyperparameters: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "per-task overrides (validated by the container)"})
    host: int | None = field(default=None, metadata={"help": "explicit host index; used when every task has one"})
    user_id: str | None = field(default=None, metadata={"help": "carried through to status and manifests"})
    metadata: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "carried through untouched"})
    output_uri: str | None = field(default=None, metadata={"help": "s3:// prefix for this task's artifacts when it finishes"})
    line: int = field(default=0, compare=False, metadata={"help": "1-based line (JSONL) or index+1 (array)"})

    def to_dict(self) -> dict[str, Any]:
        """The task as a task-list object (fields at their default are left out; no ``line``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "line" or value in (None, (), {}):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


FIELD_NAMES = tuple(f.name for f in fields(TaskSpec) if f.name != "line")
REQUIRED = ("task_id", "instance_data", "instance_prompt")


def _where(source: str, line: int, task_id: Any) -> str:
    if not isinstance(task_id, str) or not task_id:
        return f"{source}:{line}:"
    # A valid id names the task in full (ids are up to 128 characters); anything else is a
    # user's value like any other.
    valid = _TASK_ID_RE.fullmatch(task_id) and not secret_shaped(task_id)
    tid = f" task {task_id!r}" if valid else f" task {shown(task_id)}"
    return f"{source}:{line}:{tid}"


def _check_text(name: str, value: Any, required: bool) -> str | None:
    if value is None:
        return f"field '{name}' is required (a non-empty string)" if required else None
    if not isinstance(value, str) or (required and not value.strip()):
        return f"field '{name}' must be a non-empty string, got {shown(value)}"
    return None


def _check_relative(name: str, value: str) -> str | None:
    """A channel-relative folder must stay inside its channel."""
    if value.startswith("s3://"):
        return None
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or ".." in parts:
        return (f"field '{name}' must be a folder relative to its channel (no leading '/', no '..') "
                f"or an s3:// URI, got {shown(value)}")
    return None


def _field_problems(obj: Mapping[str, Any]) -> list[str]:
    """Every problem with one task object's fields (messages start with the field name)."""
    problems = []
    unknown = sorted(set(obj) - set(FIELD_NAMES))
    for name in unknown:
        problems.append(f"unknown field '{shown_name(name)}'; valid fields: {', '.join(FIELD_NAMES)}")
    task_id = obj.get("task_id")
    if isinstance(task_id, str) and not _TASK_ID_RE.fullmatch(task_id):
        problems.append(f"field 'task_id' must match {TASK_ID_PATTERN} (letters, digits, '.', '_', '-'; "
                        f"starts with a letter or digit; at most 128 chars), got {shown(task_id)}")
    for name in REQUIRED + ("class_prompt", "class_data", "user_id", "output_uri"):
        msg = _check_text(name, obj.get(name), name in REQUIRED)
        if msg:
            problems.append(msg)
    for name in ("instance_data", "class_data"):
        if isinstance(obj.get(name), str):
            msg = _check_relative(name, obj[name])
            if msg:
                problems.append(msg)
    uri = obj.get("output_uri")
    if isinstance(uri, str) and not (uri.startswith("s3://") and len(uri) > 5):
        problems.append(f"field 'output_uri' must be an s3:// URI, got {shown(uri)}")
    prompts = obj.get("validation_prompts")
    if prompts is not None and not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
        problems.append(f"field 'validation_prompts' must be a list of strings, got {shown(prompts)}")
    for name in ("hyperparameters", "metadata"):
        if obj.get(name) is not None and not isinstance(obj[name], dict):
            problems.append(f"field '{name}' must be a JSON object, got {shown(obj[name])}")
    host = obj.get("host")
    if host is not None and (isinstance(host, bool) or not isinstance(host, int) or host < 0):
        problems.append(f"field 'host' must be a non-negative integer (0 .. instances-1), got {shown(host)}")
    return problems


def _to_spec(obj: Mapping[str, Any], line: int) -> TaskSpec:
    return TaskSpec(
        task_id=obj["task_id"], instance_data=obj["instance_data"], instance_prompt=obj["instance_prompt"],
        class_prompt=obj.get("class_prompt"), class_data=obj.get("class_data"),
        validation_prompts=tuple(obj.get("validation_prompts") or ()),
        hyperparameters=dict(obj.get("hyperparameters") or {}), host=obj.get("host"),
        user_id=obj.get("user_id"), metadata=dict(obj.get("metadata") or {}),
        output_uri=obj.get("output_uri"), line=line,
    )


def _records(text: str, source: str, problems: list[str]) -> list[tuple[int, Any]]:
    """(line, decoded value) pairs from a JSON array or JSON Lines text."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{source}:{exc.lineno}: not valid JSON ({exc.msg}); expected a JSON array of task objects")
            return []
        return list(enumerate(items, start=1))
    records: list[tuple[int, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append((number, json.loads(raw)))
        except json.JSONDecodeError as exc:
            records.append((number, _BadJSON(f"{source}:{number}: not valid JSON ({exc.msg}); each line must be one task object")))
    return records


class _BadJSON(str):
    """A line that did not decode, kept in line order with the other problems."""


def parse_tasks(text: str, source: str = "<tasks>") -> list[TaskSpec]:
    """Parse and validate a task list; raise TaskListError naming every problem."""
    parsed = _parse(text, source)
    if parsed.every_problem:
        raise TaskListError(sorted(parsed.every_problem, key=_importance), source)
    return parsed.specs


def parse_job_tasks(text: str, source: str = "<tasks>") -> tuple[list[TaskSpec], dict[str, list[str]]]:
    """The container's reading: a problem that belongs to one task (any field but its id)
    costs only that task, which comes back with placeholder values and its problems (by
    task_id) so it can fail alone with its reason. TaskListError only for what no one task
    owns: an unreadable file or line, a line that is not an object, a missing, unsafe or
    duplicate task_id, no tasks at all."""
    parsed = _parse(text, source)
    if parsed.file_problems:
        raise TaskListError(sorted(parsed.file_problems, key=_importance), source)
    return parsed.specs, parsed.rejected


@dataclass
class _Parsed:
    specs: list[TaskSpec] = field(default_factory=list)              # placeholders for rejected tasks
    rejected: dict[str, list[str]] = field(default_factory=dict)     # task_id -> its own problems
    file_problems: list[str] = field(default_factory=list)           # what no one task owns
    every_problem: list[str] = field(default_factory=list)           # all of them, in line order


def _parse(text: str, source: str) -> _Parsed:
    out = _Parsed()
    first_line: dict[str, int] = {}

    def file_problem(problem: str) -> None:
        out.file_problems.append(problem)
        out.every_problem.append(problem)

    for line, obj in _records(text, source, out.file_problems):
        if isinstance(obj, _BadJSON):
            file_problem(str(obj))
            continue
        if not isinstance(obj, dict):
            file_problem(f"{source}:{line}: expected a JSON object with fields {', '.join(REQUIRED)}, got {type(obj).__name__}")
            continue
        where = _where(source, line, obj.get("task_id"))
        found = [f"{where} {msg}" for msg in _field_problems(obj)]
        own_id = [p for p in found if p.startswith(f"{where} field 'task_id'")]
        out.every_problem.extend(found)
        out.file_problems.extend(own_id)
        task_id = obj.get("task_id")
        if isinstance(task_id, str) and not own_id:
            if task_id in first_line:
                file_problem(f"{where} field 'task_id' duplicates line {first_line[task_id]}; task ids must be unique")
                continue
            first_line[task_id] = line
        if own_id:
            continue
        if found:
            out.rejected[task_id] = found
        out.specs.append(_placeholder(obj, line) if found else _to_spec(obj, line))
    out.every_problem[:0] = [p for p in out.file_problems if p not in out.every_problem]   # whole-file ones
    if not out.every_problem and not out.specs:
        file_problem(f"{source}: no tasks; expected JSON Lines (one task object per line) or a JSON array")
    return out


def _placeholder(obj: Mapping[str, Any], line: int) -> TaskSpec:
    """A task with bad fields, as far as planning and its status need it (it never trains)."""
    def valid(name: str, kind: type) -> Any:
        value = obj.get(name)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    host = valid("host", int)
    return TaskSpec(task_id=obj["task_id"], instance_data=valid("instance_data", str) or "",
                    instance_prompt=valid("instance_prompt", str) or "",
                    hyperparameters=dict(valid("hyperparameters", dict) or {}),
                    host=host if host is not None and host >= 0 else None, user_id=valid("user_id", str),
                    metadata=dict(valid("metadata", dict) or {}), line=line)


def _importance(problem: str) -> int:
    """Most important first (stable within a rank, so line order otherwise): unreadable
    lines, then duplicate ids, then missing fields, then the rest."""
    for rank, words in enumerate((("not valid JSON", "expected a JSON", "no tasks"), ("duplicates line",),
                                  ("is required",))):
        if any(w in problem for w in words):
            return rank
    return 3


def load_tasks(path) -> list[TaskSpec]:
    """Read and validate the task list at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskListError([f"{path}: cannot read the task list ({exc})"], str(path)) from exc
    return parse_tasks(text, source=str(path))


def load_job_tasks(path) -> tuple[list[TaskSpec], dict[str, list[str]]]:
    """``parse_job_tasks`` of the file at ``path`` (the container's task list)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskListError([f"{path}: cannot read the task list ({exc})"], str(path)) from exc
    return parse_job_tasks(text, source=str(path))


def dump_tasks(tasks) -> str:
    """JSON Lines text for ``tasks`` (what the launcher uploads as the job's `tasks` channel)."""
    return "".join(json.dumps(t.to_dict(), sort_keys=True) + "\n" for t in tasks)
