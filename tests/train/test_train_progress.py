"""Progress lines: the exact format SageMaker's metric regexes read, with or without a bar."""

from __future__ import annotations

import io
import re

from train.progress import Progress

LINE = re.compile(r"^task=t1 step=(\d+)/5 loss=([0-9.eE+-]+) lr=([0-9.eE+-]+) it/s=([0-9.]+)$")


def test_plain_lines_every_log_step_and_at_the_end():
    out = io.StringIO()
    p = Progress("t1", total=5, start=0, log_every=2, stream=out, bar=False)
    for step in range(1, 6):
        p.update(step, loss=0.5 / step, lr=1e-4)
    p.close()
    lines = out.getvalue().splitlines()
    assert [int(LINE.match(x).group(1)) for x in lines] == [2, 4, 5]
    assert float(LINE.match(lines[0]).group(2)) == 0.25 and float(LINE.match(lines[0]).group(3)) == 1e-4


def test_lines_still_printed_under_a_progress_bar():
    out = io.StringIO()
    p = Progress("t1", total=5, start=3, log_every=1, stream=out, bar=True)
    p.update(4, loss=0.1, lr=2e-4)
    p.update(5, loss=0.1, lr=2e-4)
    p.close()
    assert [int(LINE.match(x).group(1)) for x in out.getvalue().splitlines()] == [4, 5]
