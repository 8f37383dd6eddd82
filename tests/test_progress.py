"""Long work speaks without a terminal: a progress line at least every EVERY_S (30 s), with rate and ETA from the steps
measured, filling only the silences between a caller's own lines."""

from __future__ import annotations

import logging

from ds_distil.core import progress
from ds_distil.core.progress import EVERY_S, Progress


def test_without_a_terminal_a_line_comes_every_interval_and_a_callers_line_postpones_it(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    assert EVERY_S <= 30
    with caplog.at_level(logging.INFO, logger="ds_distil.core.progress"):
        bar = Progress(100, "distill", "step")  # stderr is not a terminal under pytest
        assert bar.bar is None and bar.log_every_s == EVERY_S
        clock[0] += 10
        bar.update(5, loss="7.123")
        assert not caplog.records  # 10 s: not yet
        clock[0] += 25
        bar.update(5)
        assert len(caplog.records) == 1
        line = caplog.records[0].getMessage()
        assert line.startswith("distill: 10/100 steps (10%) | loss 7.123 | 0.29 steps/s | ETA 5:15"), line
        clock[0] += 20
        bar.said()  # the caller logged its own step line: the silence starts again
        clock[0] += 20
        bar.update(1)
        assert len(caplog.records) == 1
        clock[0] += 11
        bar.update(1)
        assert len(caplog.records) == 2
