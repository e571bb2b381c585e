"""The one progress bar (flightlog.agent.progress): tqdm, drawn only on a terminal."""

from __future__ import annotations

import io

from flightlog.agent.progress import progress_bar
from flightlog.agent.sync import Progress
from flightlog.artifacts import ProgressBar
from tests.helpers import Terminal


def test_nothing_is_drawn_when_the_stream_is_not_a_terminal() -> None:
    out = io.StringIO()
    bar = progress_bar(100, "x", file=out)
    bar.update(100)
    bar.close()
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_with_the_right_total_in_bytes() -> None:
    out = Terminal()
    bar = ProgressBar(out)
    size = 5 << 20
    for done in range(1 << 20, size + 1, 1 << 20):
        bar("run/model/weights.bin", done, size)
    last = out.getvalue().split("\r")[-1]
    assert "model/weights.bin" in last and "100%" in last and "5.00M/5.00M" in last


def test_sync_progress_counts_batches_and_points_and_always_ends_with_a_line() -> None:
    out = Terminal()
    p = Progress(4, 4000, out)
    for _ in range(4):
        p.update(1, 1000)
    p.close()
    text = out.getvalue()
    assert "4/4" in text and "100%" in text
    assert text.rstrip().endswith("flightlog sync: sent 4/4 batches, 4,000/4,000 points")
    plain = io.StringIO()
    q = Progress(2, 20, plain)
    q.update(1, 10)
    q.close()
    assert plain.getvalue() == "flightlog sync: sent 1/2 batches, 10/20 points\n"
