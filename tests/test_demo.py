"""`make demo` fails when a task other than the one meant to fail did not complete (CI runs it)."""

from __future__ import annotations

import json

from scripts_loader import load_script


def _summaries(job, outcomes: dict[str, str]) -> None:
    for host, tids in (("algo-1", list(outcomes)[:3]), ("algo-2", list(outcomes)[3:])):
        folder = job / "s3" / "output" / host
        folder.mkdir(parents=True)
        tasks = [{"task_id": t, "outcome": outcomes[t], "error": "boom" if outcomes[t] == "failed" else None}
                 for t in tids]
        (folder / "summary.json").write_text(json.dumps({"tasks": tasks}))


def test_the_demo_reports_every_task_that_did_not_end_as_planned(tmp_path):
    load_script("make_demo_data")  # demo.py imports its sibling as scripts/ would be on sys.path
    demo = load_script("demo")
    tasks = demo.task_list(10)
    ids = [t["task_id"] for t in tasks]
    planned = {t: ("failed" if t == demo.FAILS_ON_PURPOSE else "completed") for t in ids}
    _summaries(tmp_path / "ok", planned)
    assert demo.unexpected_outcomes(tmp_path / "ok", tasks) == []

    broken = {**planned, ids[0]: "failed", demo.FAILS_ON_PURPOSE: "completed"}
    _summaries(tmp_path / "bad", broken)
    problems = demo.unexpected_outcomes(tmp_path / "bad", tasks)
    assert len(problems) == 2
    assert problems[0].startswith(f"{ids[0]}: failed (expected completed)") and "boom" in problems[0]
    assert any(p.startswith(f"{demo.FAILS_ON_PURPOSE}: completed (expected failed)") for p in problems)
