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


def test_a_host_with_slots_has_one_timeline_lane_per_slot_and_is_idle_only_when_every_slot_is(tmp_path):
    """Two slots on one host: each slot's tasks on its own row (its base load first), the host's
    busy time summed over slots, and billed idle time only where neither slot ran anything."""
    from report.files import LocalFiles
    from report.jobview import JobInputs, read_job

    def at(seconds: float) -> str:
        return f"2026-12-01T10:00:{seconds:02.0f}Z"

    tasks = [("a", 0, 2, 12, 8), ("b", 1, 2, 6, 3), ("c", 1, 8, 10, 2)]   # id, slot, start, end, own seconds
    summary = {"host": "algo-1", "slots": 2, "started_at": at(0), "finished_at": at(14), "base_model_seconds": 4.0,
               "slot_processes": [{"slot": 0, "base_model_seconds": 2.0}, {"slot": 1, "base_model_seconds": 1.0}],
               "tasks": [{"task_id": t, "slot": slot, "outcome": "completed", "started_at": at(s), "finished_at": at(e),
                          "seconds": own} for t, slot, s, e, own in tasks]}
    view = read_job(JobInputs(name="j", source="here", checkpoints=LocalFiles(tmp_path), summaries=[summary],
                              task_ids=["a", "b", "c"], hosts=["algo-1"]), None)
    assert view.has_slots and "algo-1 slot 0" in view.timeline and "algo-1 slot 1" in view.timeline
    [host] = view.hosts
    # slot 0 ran a for 10 s, slot 1 ran b and c for 4 + 2 s: 16 slot-seconds, 3 tasks; idle: 0-2 and 12-14
    assert (host.host, host.tasks, round(host.busy, 3), round(host.idle, 3)) == ("algo-1", 3, 16.0, 4.0)


def test_the_price_is_the_instance_tables_and_a_type_without_a_quote_has_none():
    from fanout.instances import INSTANCE_TYPES
    from fanout.simulate.inputs import Aws, Policy
    from report.cost import price_for

    g5 = price_for("ml.g5.xlarge")
    assert g5.per_hour == INSTANCE_TYPES["ml.g5.xlarge"].price_per_hour > 0 and "2026" in g5.source
    assert g5.per_hour == Policy("packing").price(Aws())          # what the simulator charges for it
    assert price_for("ml.g5.2xlarge") is None and price_for("ml.g5.3xlarge") is None   # no quote / no such type
    assert price_for("ml.g5.2xlarge", 1.52).per_hour == 1.52


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
