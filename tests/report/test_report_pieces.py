"""The pieces the pages are built from, with plain values: phase timings, the loss file across a
resume, failure grouping, the price, and that fanout stays light and says what is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scripts_loader import ROOT

from report.jobview import TaskRow, failure_groups
from train.metrics import MetricsLog, read_metrics
from train.timings import PhaseTimer, record_phase


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_phase_inside_another_is_counted_once_and_the_phases_add_up():
    clock, seen = Clock(), []
    timer = PhaseTimer(clock=clock, on_change=seen.append)
    with timer.phase("data"):
        clock.now += 2.0
    timer.begin("training")
    clock.now += 10.0
    with timer.phase("previews"):   # previews during training pause the training clock
        clock.now += 3.0
    clock.now += 5.0
    timer.end("training")
    clock.now += 100.0              # between phases: nobody's time
    assert timer.totals() == {"data": 2.0, "training": 15.0, "previews": 3.0}
    assert seen[-1] == timer.totals()
    timer.add({"training": 4.5, "bogus": 9})   # an interrupted attempt's time, carried on by a resume
    assert timer.totals()["training"] == 19.5 and "bogus" not in timer.totals()
    with pytest.raises(ValueError, match="unknown phase 'train'"):
        timer.begin("train")


def test_upload_seconds_are_added_to_a_finished_tasks_status(tmp_path):
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"state": "completed", "timings": {"training": 3.0}}))
    record_phase(status, "upload", 1.25)
    record_phase(status, "upload", 0.75)
    assert json.loads(status.read_text()) == {"state": "completed", "timings": {"training": 3.0, "upload": 2.0}}
    record_phase(tmp_path / "missing.json", "upload", 1.0)   # no status: nothing invented
    assert not (tmp_path / "missing.json").exists()


def test_a_resumed_run_never_writes_a_step_twice_and_its_seconds_keep_counting(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path)
    first.start(0)
    for step in range(1, 8):          # killed after step 7; its last resume state holds step 4
        first.append(step, 1.0 / step, 1e-4)
    with open(path, "a") as f:
        f.write('{"step": 8, "loss": 0.1')   # the line the kill cut short
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == list(range(1, 8))
    kept_seconds = rows[3]["seconds"]

    again = MetricsLog(path)
    again.start(4)                    # resumed from step 4: steps 5-7 are redone
    for step in range(5, 9):
        again.append(step, 0.5 / step, 1e-4)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[4]["loss"] == 0.5 / 5 and rows[4]["seconds"] >= kept_seconds
    MetricsLog(path).start(0)         # a fresh run starts an empty curve
    assert read_metrics(path) == []


def _failed(task_id: str, error: str) -> TaskRow:
    return TaskRow(task_id=task_id, user_id=None, host="algo-1", slot=None, state="failed", verdict=None, step=0,
                   total_steps=None, seconds=1.0, loss=None, thumb=None, href=None, error=error)


def test_failures_are_grouped_by_reason_whatever_the_task_path_or_number():
    rows = [_failed("ana", "instance data: /data/images/ana-photos is not a folder"),
            _failed("ben", "instance data: /data/images/ben is not a folder"),
            _failed("cy", "task 'cy': learning_rate: must be greater than 0, got -1.5"),
            _failed("dee", "task 'dee': learning_rate: must be greater than 0, got -3"),
            _failed("eve", "loss became nan at step 12; lower --learning-rate")]
    groups = failure_groups(rows)
    assert [sorted(t for t, _ in g.tasks) for g in groups] == [["ana", "ben"], ["cy", "dee"], ["eve"]]
    assert groups[0].example == "instance data: /data/images/ana-photos is not a folder"


def test_the_price_is_the_simulators_and_an_unknown_instance_type_has_none():
    from fanout.simulate.inputs import Aws
    from report.cost import price_for

    assert price_for("ml.g5.xlarge").per_hour == Aws().price_per_hour
    assert price_for("ml.p5.48xlarge") is None
    assert price_for("ml.p5.48xlarge", 98.32).per_hour == 98.32


def test_fanout_report_without_the_report_extra_says_what_to_install():
    code = ("import sys; sys.modules['jinja2'] = None\n"          # as if Jinja2 were not installed
            "from fanout.cli import main\n"
            "sys.exit(main(['report', 'some-job']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "needs the report extra" in proc.stderr and "pip install 'lora-fanout[report]'" in proc.stderr


def test_the_log_tail_keeps_what_a_task_printed_and_logged_and_still_passes_it_on(capsys):
    import logging

    from report.logtail import LogTail

    logger = logging.getLogger("container.worker")
    logger.setLevel(logging.INFO)
    with LogTail(max_lines=3) as tail:
        print("task=t1 step=1/2 loss=0.5")
        print("progress 10%\rprogress 100%")        # a bar's redraws: only what was last shown
        sys.stderr.write("a warning without its newline yet")
        logger.warning("task t1 failed: boom")
    assert len(tail.lines) == 3                                  # the last max_lines only
    first, logged, last = tail.lines
    assert first == "progress 100%" and "container.worker" in logged and "task t1 failed: boom" in logged
    assert last == "a warning without its newline yet"
    out = capsys.readouterr()
    assert "task=t1 step=1/2" in out.out and "a warning without" in out.err   # nothing swallowed
    assert type(sys.stdout).__name__ != "_Tee" and type(sys.stderr).__name__ != "_Tee"   # put back as found


def test_fanout_report_of_something_that_is_neither_a_workdir_nor_a_job_says_so(tmp_path, capsys):
    from fanout.cli import main

    assert main(["report", str(tmp_path / "no-such-workdir")]) == 2
    assert "is neither a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a `fanout local` workdir" in capsys.readouterr().err
